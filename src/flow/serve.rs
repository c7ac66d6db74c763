//! Answering from a stored entry: fresh; stale and served while it is revalidated in the
//! background (stale-while-revalidate); or stale and revalidated with the origin first.

use super::*;

impl Flow {
    pub(super) fn serve<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        found: FoundAt,
        meta: Rc<ResponseMeta>,
        body: Body<'b>,
    ) -> LookupStep<'b> {
        let from_memory = found.from_memory;
        let age_s = meta.freshness.age_s(meta.stored_at_ms, now_ms);
        let reuse = policy::reuse(&meta.freshness, age_s, &lookup.req_cc);
        if reuse == Reuse::Validate {
            self.events.push(Event::Miss);
            let meta = Rc::unwrap_or_clone(meta);
            let stored_at = StoredAt {
                entry_key: found
                    .variant
                    .as_ref()
                    .unwrap_or(&lookup.primary)
                    .redis_key
                    .clone(),
                record_key: found
                    .variant
                    .is_some()
                    .then(|| lookup.primary.redis_key.clone()),
                value_len: found.value_len,
                keep: found.keep,
            };
            return self.forward_stale(now_ms, lookup, stored_at, meta, body.bytes(), age_s);
        }
        // Several ranges make a multipart answer: the origin's to build.
        let ranged = lookup.method == Method::Get && meta.status == 200;
        let range = if ranged {
            range::answer(lookup.req.header("range"), body.len() as u64)
        } else {
            RangeAnswer::Full
        };
        if range == RangeAnswer::Multiple {
            self.events.push(Event::Bypass);
            return self.forward(now_ms, lookup, Fwd::Bypass, Some("multiple-ranges"));
        }
        self.events.push(Event::Hit);
        if from_memory {
            self.events.push(Event::MemoryHit);
        }
        let revalidating = reuse == Reuse::StaleWhileRevalidate;
        if revalidating {
            self.events.push(Event::StaleWhileRevalidate);
            self.background = self.background_revalidation(now_ms, &lookup, &found, &meta);
        }
        let stored = &meta.headers;
        let detail = match (revalidating, from_memory, self.in_grace) {
            (true, ..) => Some("stale-while-revalidate"),
            (_, true, true) => Some("memory-grace"),
            (_, true, false) => Some("memory"),
            _ => None,
        };
        let mut hit = cache_status::hit(&self.cfg.cache_name, meta.freshness.ttl_s(age_s), detail);
        if lookup.collapsed {
            // RFC 9211 §2.7: it waited for another request's fetch and reused its response.
            self.events.push(Event::Collapsed);
            hit.push_str("; collapsed");
        }
        let ours = cache_status::append(http::header_values(stored, "cache-status"), hit);
        let not_ours = |n: &str| n != "cache-status";
        // The lines added below: cache-status, age, date, and maybe content-range.
        const ADDED: usize = 4;
        // RFC 9110 §13.2.1: preconditions apply only to a 2xx answer.
        let (status, mut headers, body) = if (200..300).contains(&meta.status)
            && conditional::evaluate(&lookup.req, stored) == Precondition::NotModified
        {
            let has_etag = stored.iter().any(|(n, _)| n == "etag");
            let kept = |n: &str| conditional::kept_in_not_modified(n, has_etag);
            (
                304,
                ReplyHeaders::stored(&meta, ADDED, kept),
                body.nothing(),
            )
        } else {
            match range {
                RangeAnswer::Partial { first, last } => {
                    let len = body.len();
                    let mut h = ReplyHeaders::stored(&meta, ADDED, not_ours);
                    h.push("content-range", format!("bytes {first}-{last}/{len}"));
                    (206, h, body.range(first as usize, last as usize))
                }
                RangeAnswer::Unsatisfiable => {
                    let len = body.len();
                    let mut h = ReplyHeaders::stored(&meta, ADDED, |n| {
                        not_ours(n) && !matches!(n, "content-type" | "content-encoding")
                    });
                    h.push("content-range", format!("bytes */{len}"));
                    (416, h, body.nothing())
                }
                RangeAnswer::Full | RangeAnswer::Multiple => (
                    meta.status,
                    ReplyHeaders::stored(&meta, ADDED, not_ours),
                    body,
                ),
            }
        };
        headers.push("cache-status", ours);
        headers.push("age", age_s.to_string());
        // The stored Date is replayed with the rest (recording adds one when the origin sent
        // none); an entry without one gets its receive time.
        if !stored.iter().any(|(n, _)| n == "date") {
            headers.push("date", policy::format_http_date(meta.stored_at_ms));
        }
        self.state = State::ServingHit;
        // For HEAD, Envoy's local reply sends the headers with the body's content-length and
        // no body, which is exactly a HEAD answer: the same reply serves both methods.
        LookupStep::Respond(Reply {
            status,
            headers,
            body,
        })
    }

    /// A stale (or `no-cache`) entry goes forward. With validators, the request asks the origin
    /// whether it is still current, and a copy is kept to answer a 304 from; not when the
    /// client sent preconditions or a Range of its own (the origin's answer is then for the
    /// client, not for us). Inside its `stale-if-error` window, the copy is kept to answer an
    /// origin error too. The copy needs room in the recording budget; without it, or without a
    /// use for it, a plain forward.
    pub(super) fn forward_stale<'b>(
        &mut self,
        now_ms: u64,
        lookup: Lookup,
        stored_at: StoredAt,
        meta: ResponseMeta,
        body: &[u8],
        age_s: u64,
    ) -> LookupStep<'b> {
        let conditions = revalidate::conditional_headers(&meta.headers);
        let client_owns_conditions = ["if-none-match", "if-modified-since", "range"]
            .iter()
            .any(|h| lookup.req.has(h));
        let revalidating = !conditions.is_empty() && !client_owns_conditions;
        let f = &meta.freshness;
        let if_error = f.within_stale_window(age_s, f.stale_if_error_s);
        let mut reservation = Reservation::new(self.worker.budget.clone());
        if !(revalidating || if_error)
            || lookup.req_cc.only_if_cached
            || !reservation.grow(body.len())
        {
            return self.forward(now_ms, lookup, Fwd::Stale, None);
        }
        let step = self.forward(now_ms, lookup, Fwd::Stale, None);
        if let State::Forwarded(f) = &mut self.state {
            f.stale = Some(Box::new(StaleCopy {
                stored_at,
                meta,
                body: body.to_vec(),
                revalidating,
                if_error,
                _reservation: reservation,
            }));
            if revalidating {
                return LookupStep::Revalidate(conditions);
            }
        }
        step
    }

    /// The revalidation of a stale entry served under `stale-while-revalidate`, unless this
    /// worker revalidates it already: a flow as if the request had gone forward with the
    /// entry's validators, and the callout's headers.
    fn background_revalidation(
        &self,
        now_ms: u64,
        lookup: &Lookup,
        found: &FoundAt,
        meta: &ResponseMeta,
    ) -> Option<Box<Background>> {
        let entry = found.variant.as_ref().unwrap_or(&lookup.primary);
        let until = now_ms + BACKGROUND_TIMEOUT_MS;
        if !self
            .worker
            .revalidating
            .borrow_mut()
            .claim(&entry.redis_key, now_ms, until)
        {
            return None;
        }
        let conditions = revalidate::conditional_headers(&meta.headers);
        // Whatever asked (a HEAD too), the revalidation is a GET: it may replace the entry.
        let mut req = lookup.req.clone();
        req.method = "GET".into();
        let headers = revalidate::background_request(&req, &conditions);
        let stale = (!conditions.is_empty()).then(|| {
            Box::new(StaleCopy {
                stored_at: StoredAt {
                    entry_key: entry.redis_key.clone(),
                    record_key: found
                        .variant
                        .is_some()
                        .then(|| lookup.primary.redis_key.clone()),
                    value_len: found.value_len,
                    keep: found.keep,
                },
                meta: meta.clone(),
                body: Vec::new(),
                revalidating: true,
                if_error: false,
                _reservation: Reservation::new(self.worker.budget.clone()),
            })
        });
        let mut flow = Flow::new(self.cfg.clone(), self.worker.clone());
        flow.state = State::Forwarded(Forward {
            req,
            primary: Some(lookup.primary.clone()),
            fwd: Fwd::Stale,
            detail: None,
            request_ms: now_ms,
            stale,
            lead: None,
            marks_uncacheable: false,
        });
        Some(Box::new(Background {
            key: entry.redis_key.clone(),
            headers,
            flow,
        }))
    }

    /// The origin failed (RFC 5861 §4: a 500, 502, 503 or 504, its own or Envoy's when the
    /// origin could not be reached) and the stale entry may answer instead.
    pub(super) fn answer_stale_if_error(
        &mut self,
        now_ms: u64,
        copy: StaleCopy,
        origin_status: u16,
    ) -> ResponseStep {
        self.events.push(Event::StaleIfError);
        let meta = copy.meta;
        let age_s = meta.freshness.age_s(meta.stored_at_ms, now_ms);
        let ours = cache_status::stale_if_error(
            &self.cfg.cache_name,
            origin_status,
            meta.freshness.ttl_s(age_s),
        );
        let ours = cache_status::append(http::header_values(&meta.headers, "cache-status"), ours);
        let mut headers = meta.headers;
        headers.retain(|(n, _)| n != "cache-status");
        headers.push(("cache-status".into(), ours));
        headers.push(("age".into(), age_s.to_string()));
        // Our local reply comes back through the response callbacks: leave it alone.
        self.state = State::ServingHit;
        ResponseStep {
            respond: Some(OwnedReply {
                status: meta.status,
                headers,
                body: copy.body,
            }),
            ..ResponseStep::default()
        }
    }
}

/// RFC 5861 §4's errors: a response with one of these statuses may be replaced by a stale
/// entry inside its `stale-if-error` window.
pub(super) fn is_origin_error(status: u16) -> bool {
    matches!(status, 500 | 502 | 503 | 504)
}
