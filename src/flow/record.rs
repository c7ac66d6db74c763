//! The origin's response: store it (record the body as it streams past), refresh a
//! revalidated entry from a 304, or pass it on.

use super::*;

pub(super) struct Recording {
    primary: CacheKey,
    variant: Option<(CacheKey, Vec<String>)>,
    writer: EntryWriter,
    meta: ResponseMeta,
    ttl_ms: u64,
    /// Content-Length, if the origin sent one: a body of another length is not published.
    expected_len: Option<u64>,
    /// The body bytes held, counted against the worker's budget until the recording ends.
    reservation: Reservation,
    /// Tag sets (their keys) that will list this resource.
    tags: Vec<String>,
    /// Set when others wait for this recording's entry (its write frees the lock).
    lead: Option<Lead>,
    /// Dropped as never storable, it marks the resource (see `Forward::marks_uncacheable`).
    marks_uncacheable: bool,
}

impl Flow {
    /// The response's headers, and where they come from.
    pub fn handle_response_headers(
        &mut self,
        now_ms: u64,
        resp: &ResponseHead,
        end_of_stream: bool,
        source: Source,
    ) -> ResponseStep {
        let mut fwd = match std::mem::replace(&mut self.state, State::Done) {
            State::Forwarded(f) => f,
            State::ServingHit => {
                self.state = State::ServingHit;
                return ResponseStep::default();
            }
            // The request never reached a lookup decision (an Envoy local reply before the
            // request headers were complete, or one sent while a lookup was pending).
            _ => return ResponseStep::default(),
        };
        // Anything but a 304 replaces the stored entry (or is passed on): the copy goes.
        if let Some(copy) = fwd.stale.take() {
            if copy.revalidating && source == Source::Origin && resp.status == 304 {
                return self.answer_revalidated(now_ms, fwd, *copy, resp);
            }
            if copy.if_error && serve::is_origin_error(resp.status) {
                return self.answer_stale_if_error(now_ms, *copy, resp.status);
            }
        }
        let invalidate = if source == Source::Envoy {
            Vec::new()
        } else {
            purge::invalidation_targets(&self.cfg, &fwd.req, resp)
        };
        if !invalidate.is_empty() {
            self.events.push(Event::Invalidated);
            self.bury(&invalidate, now_ms);
        }
        let mut recording = None;
        let lead = fwd.lead.take();
        if let Some(primary) = fwd.primary {
            let decision = match source {
                Source::Origin => self.storability(&fwd.req, resp, fwd.request_ms, now_ms),
                Source::Envoy => Err(NotStored::NotFromOrigin),
                Source::Unreplayable => Err(NotStored::BadHeader),
            };
            match decision {
                Ok(s) => {
                    let mut rec = self.start_recording(now_ms, primary, &fwd.req, resp, s);
                    rec.lead = lead;
                    rec.marks_uncacheable = fwd.marks_uncacheable;
                    if rec.lead.is_some() && self.cfg.collapse.exempts(resp.header("content-type"))
                    {
                        // Its followers go to the origin now rather than wait for the whole
                        // recording; the entry's write removes the marker.
                        let ttl_ms = self.cfg.collapse.max_wait_ms;
                        self.end_lead(rec.lead.take(), Unlock::Exempt { ttl_ms });
                    }
                    recording = Some(rec);
                }
                Err(why) => {
                    self.events.push(Event::NotStored(why));
                    self.not_storable(
                        &primary,
                        lead,
                        why,
                        resp.status,
                        fwd.marks_uncacheable,
                        now_ms,
                    );
                }
            }
        } else {
            self.end_lead(lead, Unlock::Release);
        }
        let status = cache_status::forwarded(
            &self.cfg.cache_name,
            fwd.fwd,
            Some(resp.status),
            recording.is_some(),
            fwd.detail,
        );
        let cache_status = Some(cache_status::append(resp.values("cache-status"), status));
        let mut step = ResponseStep {
            cache_status,
            remove_header: policy::targeted_field(&self.cfg, resp).map(str::to_string),
            publish: None,
            invalidate,
            respond: None,
        };
        if let Some(rec) = recording {
            self.state = State::Recording(Box::new(rec));
            if end_of_stream {
                step.publish = self.complete();
            }
        }
        step
    }

    /// A response that will not be stored. Its waiting followers go to the origin; if it can
    /// never be (a policy of the response, not a failure of this fetch) and `marks`, the
    /// resource is remembered as such (hit-for-miss) on this worker and, through its lock key,
    /// fleet-wide.
    fn not_storable(
        &mut self,
        primary: &CacheKey,
        lead: Option<Lead>,
        why: NotStored,
        status: u16,
        marks: bool,
        now_ms: u64,
    ) {
        let never = match why {
            // A 304 or 206 answers the client's own conditions or range, not the resource.
            NotStored::Status => status < 500 && status != 304 && status != 206,
            NotStored::NoStore
            | NotStored::Private
            | NotStored::NoCache
            | NotStored::SetCookie
            | NotStored::VaryAny
            | NotStored::NotFresh
            | NotStored::BadHeader
            | NotStored::TooLarge => true,
            // Of this request, or of this attempt: the next one may be stored.
            NotStored::Authorization | NotStored::NotFromOrigin => false,
        };
        let ttl_s = self.cfg.hit_for_miss_s;
        if !never || !marks || ttl_s == 0 {
            self.end_lead(lead, Unlock::Release);
            return;
        }
        let until = now_ms.saturating_add(ttl_s * 1000);
        self.worker
            .uncacheable
            .borrow_mut()
            .insert(&primary.redis_key, until);
        let unlock = Unlock::Uncacheable {
            ttl_ms: ttl_s * 1000,
        };
        match lead {
            Some(lead) => self.end_lead(Some(lead), unlock),
            // Not a leader: the fleet learns it from whoever saw it first.
            None => self.unlock = Some((primary.redis_key.clone(), 0, unlock)),
        }
    }

    /// The fetch this request led ends without its entry: the lock becomes `unlock`.
    pub(super) fn end_lead(&mut self, lead: Option<Lead>, unlock: Unlock) {
        if let Some(lead) = lead {
            self.unlock = Some((lead.key, lead.owner, unlock));
        }
    }

    /// The origin confirmed the stored entry (304): answer from it with its headers updated,
    /// and write only the new metadata to the store (§4.3.4).
    pub(super) fn answer_revalidated(
        &mut self,
        now_ms: u64,
        fwd: Forward,
        reval: StaleCopy,
        not_modified: &ResponseHead,
    ) -> ResponseStep {
        self.events.push(Event::Revalidated);
        let targeted = policy::targeted_field(&self.cfg, not_modified);
        let mut merged =
            revalidate::merge_not_modified(&reval.meta.headers, not_modified, targeted);
        if not_modified.header("date").is_none() {
            // A 304 without Date is dated when received (RFC 9110 §6.6.1): the refreshed
            // response's age counts from now, not from the first response's Date.
            merged.retain(|(n, _)| n != "date");
            merged = stored_with_date(merged, now_ms);
        }
        // Freshness and age come from the updated headers plus the 304's own Date and Age.
        let mut head = ResponseHead {
            status: reval.meta.status,
            headers: merged.clone(),
        };
        // The merged headers carry the 304's Date (or the stored one); its Age counts too.
        if let Some(v) = not_modified.header("age") {
            head.headers.push(("age".to_string(), v.to_string()));
        }
        let mut meta = reval.meta;
        meta.headers = merged;
        let mut publish = None;
        match self.storability(&fwd.req, &head, fwd.request_ms, now_ms) {
            Ok(s) => {
                meta.stored_at_ms = now_ms;
                meta.freshness = s.freshness;
                let at = &reval.stored_at;
                let (key, variant) = match &at.record_key {
                    Some(record) => (
                        record.clone(),
                        Some(VariantWrite {
                            key: at.entry_key.clone(),
                            record: Vec::new(),
                        }),
                    ),
                    None => (at.entry_key.clone(), None),
                };
                publish = Some(Write {
                    key,
                    variant,
                    ttl_ms: s.freshness.store_ttl_ms(self.cfg.keep_stale_s),
                    entry: entry::encode_tail(&entry::Meta::Response(meta.clone())),
                    refresh: Some(Refresh {
                        keep: at.keep,
                        expected_len: at.value_len,
                    }),
                    tags: Vec::new(),
                });
            }
            Err(why) => self.events.push(Event::NotStored(why)),
        }
        let ours = cache_status::forwarded(
            &self.cfg.cache_name,
            Fwd::Stale,
            Some(304),
            publish.is_some(),
            None,
        );
        let ours = cache_status::append(http::header_values(&meta.headers, "cache-status"), ours);
        let mut headers = meta.headers;
        headers.retain(|(n, _)| n != "cache-status");
        headers.push(("cache-status".into(), ours));
        headers.push(("age".into(), meta.freshness.initial_age_s.to_string()));
        // Our local reply comes back through the response callbacks: leave it alone.
        self.state = State::ServingHit;
        ResponseStep {
            cache_status: None,
            remove_header: None,
            publish,
            invalidate: Vec::new(),
            respond: Some(OwnedReply {
                status: meta.status,
                headers,
                body: reval.body,
            }),
        }
    }

    pub(super) fn storability(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        request_ms: u64,
        now_ms: u64,
    ) -> Result<Storable, NotStored> {
        let s = policy::storability(
            &self.cfg,
            req,
            resp,
            Exchange {
                request_ms,
                response_ms: now_ms,
            },
        )?;
        let too_long = resp
            .header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > self.cfg.max_body_bytes as u64);
        if too_long {
            // Known too big before the first byte: don't even start.
            return Err(NotStored::TooLarge);
        }
        Ok(s)
    }

    pub(super) fn start_recording(
        &mut self,
        now_ms: u64,
        primary: CacheKey,
        req: &RequestHead,
        resp: &ResponseHead,
        s: Storable,
    ) -> Recording {
        let variant = match &s.vary {
            Vary::Headers(names) => Some((primary.variant(names, req), names.clone())),
            Vary::None | Vary::Any => None,
        };
        let key_digest = match &variant {
            Some((v, _)) => v.digest,
            None => primary.digest,
        };
        let (tags, tags_over) = purge::response_tags(&self.cfg, resp);
        if tags_over > 0 {
            self.events.push(Event::TagsDropped);
        }
        Recording {
            expected_len: resp
                .header("content-length")
                .and_then(|l| l.trim().parse().ok()),
            ttl_ms: s.freshness.store_ttl_ms(self.cfg.keep_stale_s),
            meta: ResponseMeta {
                status: resp.status,
                headers: stored_with_date(
                    policy::stored_headers(
                        resp,
                        s.strip_set_cookie,
                        policy::targeted_field(&self.cfg, resp),
                    ),
                    now_ms,
                ),
                chunks: Vec::new(),
                stored_at_ms: now_ms,
                freshness: s.freshness,
                key_digest,
                body_len: 0,
                body_hash: 0,
                packed: false,
            },
            primary,
            variant,
            writer: self.writer_for(resp),
            reservation: Reservation::new(self.worker.budget.clone()),
            tags,
            lead: None,
            marks_uncacheable: false,
        }
    }

    /// The recording's writer: packing the body if compression is on and the response is
    /// worth trying (not encoded already, not a compressed format).
    fn writer_for(&self, resp: &ResponseHead) -> EntryWriter {
        let c = &self.cfg.compression;
        let w = EntryWriter::new();
        if c.enabled
            && crate::packing::worth_trying(
                resp.header("content-type"),
                resp.header("content-encoding"),
            )
        {
            let min = usize::try_from(c.min_bytes).unwrap_or(usize::MAX);
            w.packing(self.worker.codec.clone(), min)
        } else {
            w
        }
    }

    /// A chunk of the response body, as the host delivered it. Returns the write to publish
    /// once the response completed whole.
    pub fn handle_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Write> {
        let State::Recording(rec) = &mut self.state else {
            return None;
        };
        if rec.writer.body_len() + chunk.len() > self.cfg.max_body_bytes {
            self.events.push(Event::RecordingTooLarge);
            self.drop_recording(Some(NotStored::TooLarge));
            return None;
        }
        let mut room = rec.reservation.grow(chunk.len());
        if !room && rec.writer.packed_len() > 0 {
            // The packed copy is optional, the recording is not: the copy goes first.
            rec.reservation.shrink(rec.writer.packed_len());
            rec.writer.stop_packing();
            room = rec.reservation.grow(chunk.len());
        }
        if !room {
            self.events.push(Event::RecordingOverBudget);
            self.drop_recording(None);
            return None;
        }
        let packed = rec.writer.packed_len();
        rec.writer.push_chunk(chunk);
        // The packed copy grows beside the raw body: it needs room in the budget too, or the
        // body is stored as it is (and the room the copy held is given back).
        let now_packed = rec.writer.packed_len();
        if now_packed > packed && !rec.reservation.grow(now_packed - packed) {
            rec.writer.stop_packing();
        }
        if rec.writer.packed_len() < packed {
            rec.reservation.shrink(packed);
        }
        // With Content-Length, the client has the whole response with its last byte, before
        // the end of the stream: the recording is complete there, so that its end can wait for
        // the store (read your writes) while the last bytes do.
        let whole = rec.expected_len == Some(rec.writer.body_len() as u64);
        if end_of_stream || whole {
            self.complete()
        } else {
            None
        }
    }

    /// Response trailers: we don't store them, so a response that has them can't be replayed
    /// whole and is not published.
    pub fn handle_response_trailers(&mut self) {
        if let State::Recording(_) = self.state {
            self.events.push(Event::RecordingAborted);
            // Never replayable whole, whatever its headers say.
            self.drop_recording(Some(NotStored::BadHeader));
        }
    }

    /// The recording can't be completed whole (a body chunk the host could not give): drop
    /// it; the response itself goes on.
    pub fn abort_recording(&mut self) {
        if let State::Recording(_) = self.state {
            self.events.push(Event::RecordingAborted);
            self.drop_recording(None);
        }
    }

    /// The stream is over (Envoy's `on_log`). A recording still open here never completed: the
    /// origin reset, or the client went away. Nothing is published.
    pub fn handle_stream_end(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Recording(rec) => {
                self.events.push(Event::RecordingAborted);
                self.end_lead(rec.lead, Unlock::Release);
            }
            // Forwarded and gone before the response (the client left, the stream reset).
            State::Forwarded(f) => self.end_lead(f.lead, Unlock::Release),
            // Waited for a lookup and gone: a lock it took on the way is the outbox's to free.
            _ => {}
        }
    }

    /// Drops the recording: the response goes on unrecorded. `never`: why no response of the
    /// resource will be (hit-for-miss); `None`: this attempt failed (the lock is freed).
    fn drop_recording(&mut self, never: Option<NotStored>) {
        let State::Recording(rec) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        let rec = *rec;
        match never {
            Some(why) => {
                // The response's headers came at `stored_at_ms`: near enough to now.
                let (status, at) = (rec.meta.status, rec.meta.stored_at_ms);
                let marks = rec.marks_uncacheable;
                self.not_storable(&rec.primary, rec.lead, why, status, marks, at);
            }
            None => self.end_lead(rec.lead, Unlock::Release),
        }
    }

    pub(super) fn complete(&mut self) -> Option<Write> {
        let State::Recording(rec) = std::mem::replace(&mut self.state, State::Done) else {
            return None;
        };
        let rec = *rec;
        if rec
            .expected_len
            .is_some_and(|l| l != rec.writer.body_len() as u64)
        {
            self.events.push(Event::RecordingAborted);
            self.end_lead(rec.lead, Unlock::Release);
            return None;
        }
        // Storable after all: no longer skip its lookups here. (Its write removes the lock
        // key, and with it any mark the fleet had.)
        self.worker
            .uncacheable
            .borrow_mut()
            .remove(&rec.primary.redis_key);
        let entry = rec.writer.finish_response(rec.meta);
        self.write_lock = rec.lead.map(|l| (l.key, l.owner));
        // This worker won't serve an older copy from memory once the new one is written.
        self.forget(std::slice::from_ref(&rec.primary.redis_key));
        if let Some((v, _)) = &rec.variant {
            self.forget(std::slice::from_ref(&v.redis_key));
        }
        let (key, variant) = match rec.variant {
            None => (rec.primary.redis_key, None),
            Some((vkey, headers)) => {
                let record = entry::encode_variants(VariantsMeta {
                    headers,
                    key_digest: rec.primary.digest,
                });
                (
                    rec.primary.redis_key,
                    Some(VariantWrite {
                        key: vkey.redis_key,
                        record,
                    }),
                )
            }
        };
        Some(Write {
            key,
            variant,
            ttl_ms: rec.ttl_ms,
            entry,
            refresh: None,
            tags: rec.tags,
        })
    }
}
