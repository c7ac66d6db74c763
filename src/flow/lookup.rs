//! The store's (or the in-proxy tier's) answer to a lookup: check it belongs to the request's
//! key, follow a variants record, and keep what was read in the in-proxy tier.

use super::*;
use crate::entry::SharedDecoding;

/// A value found for a key, decoded.
pub(super) enum Found<'b> {
    Response {
        meta: Rc<ResponseMeta>,
        value: Value<'b>,
        /// The value's length as stored (shorter than `value` when stored packed).
        stored_len: u64,
    },
    Variants(VariantsMeta),
}

/// A whole stored value (already validated, its body unpacked): borrowed from the store's
/// answer, unpacked from it, or shared with the in-proxy tier.
pub(super) enum Value<'b> {
    Borrowed(&'b [u8]),
    Unpacked(Rc<[u8]>),
    Shared(Rc<[u8]>),
}

impl<'b> Value<'b> {
    pub(super) fn len(&self) -> usize {
        match self {
            Value::Borrowed(v) => v.len(),
            Value::Unpacked(v) | Value::Shared(v) => v.len(),
        }
    }

    pub(super) fn is_in_memory(&self) -> bool {
        matches!(self, Value::Shared(_))
    }

    /// The body: `body_len` bytes where the entry format puts it.
    pub(super) fn body(&self, body_len: usize) -> Body<'b> {
        let (start, end) = (entry::BODY_START, entry::BODY_START + body_len);
        match self {
            Value::Borrowed(v) => Body::Borrowed(&v[start..end]),
            Value::Unpacked(v) | Value::Shared(v) => Body::Shared(v.clone(), start, end),
        }
    }
}

impl Flow {
    /// The store's answer to the last `Lookup`: what the key holds (with collapsed misses,
    /// who fetches a missing entry), or an error.
    pub fn handle_store_reply<'b>(
        &mut self,
        now_ms: u64,
        reply: Result<Looked<&'b [u8]>, StoreError>,
    ) -> LookupStep<'b> {
        self.handle_store_answer(now_ms, reply, &SharedDecoding::default())
    }

    /// [`Flow::handle_store_reply`] for a value other requests share: what one of them
    /// learns decoding it, the others use ([`SharedDecoding`]).
    pub fn handle_store_answer<'b>(
        &mut self,
        now_ms: u64,
        reply: Result<Looked<&'b [u8]>, StoreError>,
        shared: &SharedDecoding,
    ) -> LookupStep<'b> {
        let (mut lookup, variant) = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitPrimary(l) => (l, None),
            State::AwaitVariant(l, v) => (l, Some(v)),
            other => {
                // A late or unexpected answer: nothing waits for it.
                self.state = other;
                return LookupStep::Continue;
            }
        };
        let value = match reply {
            Ok(v) => v,
            Err(e) => {
                self.events.push(Event::StoreError(e));
                let mut step = self.forward(now_ms, lookup, Fwd::Miss, Some(e.as_str()));
                if !e.may_accept_writes() {
                    // Recording for a store that just refused a read only adds two failing
                    // writes (and their retries) per miss during an outage.
                    if let State::Forwarded(f) = &mut self.state {
                        f.primary = None;
                    }
                    step = LookupStep::Continue;
                }
                return step;
            }
        };
        let miss = if variant.is_some() {
            Fwd::VaryMiss
        } else {
            Fwd::UriMiss
        };
        if let Some(since) = lookup.waited_since.take() {
            self.events
                .push(Event::CollapseWaitMs(now_ms.saturating_sub(since)));
            lookup.collapsed = true;
        }
        let key = variant
            .as_ref()
            .unwrap_or(&lookup.primary)
            .redis_key
            .clone();
        let (detail, lead, known_uncacheable) = match value {
            Looked::Value(value) => {
                return self.handle_value(now_ms, lookup, variant, value, shared);
            }
            Looked::Missing => (None, None, false),
            Looked::Lead(owner) => (None, Some(Lead { key, owner }), false),
            Looked::NoWait(Marker::Uncacheable) => {
                if self.cfg.hit_for_miss_s > 0 {
                    let until = now_ms.saturating_add(self.cfg.hit_for_miss_s * 1000);
                    self.worker.uncacheable.borrow_mut().insert(&key, until);
                }
                (Some("hit-for-miss"), None, true)
            }
            Looked::NoWait(Marker::Exempt) => (Some("collapse-exempt"), None, false),
            Looked::WaitOver => {
                self.events.push(Event::CollapseTimeout);
                (Some("collapse-timeout"), None, false)
            }
        };
        self.events.push(Event::Miss);
        let step = self.forward(now_ms, lookup, miss, detail);
        if let State::Forwarded(f) = &mut self.state {
            f.lead = lead;
            f.marks_uncacheable &= !known_uncacheable;
        } else if let Some(lead) = lead {
            // Not forwarded after all (`only-if-cached`): no fetch will come.
            self.unlock = Some((lead.key, lead.owner, Unlock::Release));
        }
        step
    }

    /// A value read for the current key: decode it, then [`Flow::handle_found`].
    fn handle_value<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        variant: Option<CacheKey>,
        value: &'b [u8],
        shared: &SharedDecoding,
    ) -> LookupStep<'b> {
        let miss = if variant.is_some() {
            Fwd::VaryMiss
        } else {
            Fwd::UriMiss
        };
        let stored_len = value.len() as u64;
        let digest = variant.as_ref().unwrap_or(&lookup.primary).digest;
        let decoded = entry::decode_shared(value, shared).and_then(|d| match d {
            // A packed body is served (and kept in memory) unpacked: only a value of this
            // key's (`handle_found` refuses the others without inflating anything).
            Decoded::Response { meta, .. } if meta.packed && meta.key_digest == digest => {
                let max = self.cfg.max_body_bytes;
                let plain = entry::unpack_shared(value, &meta, &*self.worker.codec, max, shared)?;
                Ok(Found::Response {
                    meta: Rc::new(meta),
                    value: Value::Unpacked(plain),
                    stored_len,
                })
            }
            // The body is found again from the metadata: decode checked where it lies.
            Decoded::Response { meta, body: _ } => Ok(Found::Response {
                meta: Rc::new(meta),
                value: Value::Borrowed(value),
                stored_len,
            }),
            Decoded::Variants(v) => Ok(Found::Variants(v)),
        });
        let found = match decoded {
            Ok(found) => found,
            Err(e) => {
                self.events.push(Event::CorruptEntry(e));
                self.events.push(Event::Miss);
                return self.forward(now_ms, lookup, miss, Some("invalid-entry"));
            }
        };
        self.handle_found(now_ms, lookup, variant, found)
    }

    /// A value for the current key, from the store or the in-proxy tier: check that it belongs
    /// to this request's key, then follow a variants record or serve the response.
    pub(super) fn handle_found<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        variant: Option<CacheKey>,
        found: Found<'b>,
    ) -> LookupStep<'b> {
        let miss = if variant.is_some() {
            Fwd::VaryMiss
        } else {
            Fwd::UriMiss
        };
        let expected = variant.as_ref().unwrap_or(&lookup.primary);
        match found {
            Found::Variants(v) if variant.is_none() => {
                if v.key_digest != lookup.primary.digest || v.headers.is_empty() {
                    self.events.push(Event::KeyMismatch);
                    self.events.push(Event::Miss);
                    return self.forward(now_ms, lookup, miss, Some("invalid-entry"));
                }
                let vkey = lookup.primary.variant(&v.headers, &lookup.req);
                self.remember(
                    &lookup.primary.redis_key,
                    Remembered::Variants(v),
                    now_ms,
                    u64::MAX,
                );
                let key = vkey.redis_key.clone();
                if let Some(found) = self.recall(&key, now_ms) {
                    return self.handle_found(now_ms, lookup, Some(vkey), found);
                }
                self.events.push(Event::Lookup);
                self.state = State::AwaitVariant(lookup, vkey);
                LookupStep::Lookup(key)
            }
            Found::Response {
                meta,
                value,
                stored_len,
            } if meta.key_digest == expected.digest => {
                let from_memory = value.is_in_memory();
                if !from_memory {
                    self.remember_response(&expected.redis_key, &meta, &value, stored_len, now_ms);
                }
                // What precedes the metadata tail in the stored value (the tail is the same
                // in an unpacked copy): what a refresh keeps.
                let tail = value.len() - entry::BODY_START - meta.body_len as usize;
                let body = value.body(meta.body_len as usize);
                let found = FoundAt {
                    variant,
                    value_len: stored_len,
                    keep: stored_len.saturating_sub(tail as u64),
                    from_memory,
                };
                self.serve(now_ms, lookup, found, meta, body)
            }
            _ => {
                self.events.push(Event::KeyMismatch);
                self.events.push(Event::Miss);
                self.forward(now_ms, lookup, miss, Some("invalid-entry"))
            }
        }
    }

    /// The in-proxy tier's value for `key`, if it has one.
    /// While the store fails, past the tier's max age too (grace).
    pub(super) fn recall(&mut self, key: &str, now_ms: u64) -> Option<Found<'static>> {
        let mut memory = self.worker.memory.borrow_mut();
        let item = match memory.get(key, now_ms) {
            Some(item) => item,
            None if self.worker.store_failing.get() => {
                let item = memory.get_in_grace(key, now_ms)?;
                self.in_grace = true;
                item
            }
            None => return None,
        };
        Some(match item {
            Remembered::Variants(v) => Found::Variants(v),
            Remembered::Response {
                meta,
                value,
                stored_len,
            } => Found::Response {
                meta,
                value: Value::Shared(value),
                stored_len,
            },
        })
    }

    pub(super) fn remember(&self, key: &str, item: Remembered, now_ms: u64, fresh_until_ms: u64) {
        let mut memory = self.worker.memory.borrow_mut();
        if memory.enabled() {
            memory.insert(key, item, now_ms, fresh_until_ms);
        }
    }

    /// Keeps a response read from the store in the in-proxy tier while it is fresh and usable
    /// without validation (a copy of the value: only when the tier is on).
    pub(super) fn remember_response(
        &self,
        key: &str,
        meta: &Rc<ResponseMeta>,
        value: &Value<'_>,
        stored_len: u64,
        now_ms: u64,
    ) {
        if !self.worker.memory.borrow().enabled() || meta.freshness.no_cache {
            return;
        }
        let fresh_until_ms = meta.freshness.fresh_until_ms(meta.stored_at_ms);
        // A stale one is kept too while a stale window allows it: it serves in grace only.
        let usable_until_ms = meta.freshness.usable_until_ms(meta.stored_at_ms);
        if usable_until_ms <= now_ms {
            return;
        }
        let item = Remembered::Response {
            meta: Rc::clone(meta),
            value: match value {
                Value::Borrowed(v) => Rc::from(*v),
                Value::Unpacked(v) | Value::Shared(v) => v.clone(),
            },
            stored_len,
        };
        let mut memory = self.worker.memory.borrow_mut();
        memory.insert_with_grace(key, item, now_ms, fresh_until_ms, usable_until_ms);
    }

    /// Drops invalidated or purged keys from this worker's tier, and keeps it from taking
    /// back a value read before now (see `MemoryTier::forget`).
    pub(super) fn bury(&self, keys: &[String], now_ms: u64) {
        let mut memory = self.worker.memory.borrow_mut();
        for k in keys {
            memory.forget(k, now_ms);
        }
    }

    pub(super) fn forget(&self, keys: &[String]) {
        let mut memory = self.worker.memory.borrow_mut();
        for k in keys {
            memory.remove(k);
        }
    }
}
