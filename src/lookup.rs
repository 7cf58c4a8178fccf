//! The socketmap request path: parse, normalise, ask the backend within a deadline,
//! turn the result into a [`Reply`].
//!
//! Failure semantics live here. Anything the backend cannot answer with certainty
//! becomes `TEMP` (Postfix defers, mail is delayed but never lost); `NOTFOUND` is
//! only ever the backend's own verdict or a key that cannot name a user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postfix_adapter_backend::{Address, BackendError, LookupBackend};
use prometheus::{Histogram, IntCounter};

use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::normalize::{AddressKey, Normalizer};
use crate::protocol::socketmap::{self, Reply};

/// The maps the adapter serves, as Postfix names them in `socketmap:...:NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MapName {
    /// `virtual_alias_maps`: destinations of an alias.
    Alias,
    /// `virtual_mailbox_domains`: whether a domain is hosted.
    Domain,
    /// `virtual_mailbox_maps`: whether a mailbox exists.
    Mailbox,
    /// `smtpd_sender_login_maps`: logins allowed to send as an address.
    Senders,
}

impl MapName {
    /// Parses a map name (case-sensitive, like upstream).
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "alias" => Some(Self::Alias),
            "domain" => Some(Self::Domain),
            "mailbox" => Some(Self::Mailbox),
            "senders" => Some(Self::Senders),
            _ => None,
        }
    }

    /// The wire name, also the `handler` metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Alias => "alias",
            Self::Domain => "domain",
            Self::Mailbox => "mailbox",
            Self::Senders => "senders",
        }
    }

    /// Upstream's exact `TEMP` reason for this map.
    pub(crate) fn temp_reason(self) -> &'static str {
        match self {
            Self::Alias => "Error fetching aliases",
            Self::Domain => "Error fetching domain",
            Self::Mailbox => "Error fetching mailbox",
            Self::Senders => "Error fetching senders",
        }
    }
}

/// The `handler` label for a request whose payload is not `name SP key`.
pub(crate) const HANDLER_INVALID: &str = "invalid";
/// The `handler` label for every map name the adapter does not serve; collapsing
/// them keeps label cardinality bounded whatever clients send.
pub(crate) const HANDLER_UNKNOWN: &str = "unknown";

/// A reply plus what the metrics need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The reply to send.
    pub reply: Reply,
    /// The bounded `handler` label.
    pub handler: &'static str,
}

impl Answer {
    /// The `status` metric label, as upstream: `success`, `notfound` or `error`.
    pub(crate) fn status_label(&self) -> &'static str {
        match self.reply {
            Reply::Ok(_) => "success",
            Reply::NotFound => "notfound",
            Reply::Temp(_) | Reply::Perm(_) => "error",
        }
    }
}

/// Answers socketmap requests from a backend; shared by every connection.
pub(crate) struct LookupService {
    backend: Arc<dyn LookupBackend>,
    normalizer: Normalizer,
    timeout: Option<Duration>,
    /// One deadline for a whole lookup, however many backend questions it takes
    /// (an address with an extension may take two rounds).
    overall: Option<Duration>,
    metrics: Metrics,
    series: RequestSeries,
    error_log: LogThrottle,
}

/// The request counter and histogram of every `handler`/`status` pair, resolved
/// once instead of per request.
struct RequestSeries {
    series: Vec<(&'static str, &'static str, IntCounter, Histogram)>,
}

impl RequestSeries {
    const HANDLERS: [&'static str; 6] = [
        "alias",
        "domain",
        "mailbox",
        "senders",
        HANDLER_INVALID,
        HANDLER_UNKNOWN,
    ];
    const STATUSES: [&'static str; 3] = ["success", "notfound", "error"];

    fn new(metrics: &Metrics) -> Self {
        let mut series = Vec::new();
        for handler in Self::HANDLERS {
            for status in Self::STATUSES {
                series.push((
                    handler,
                    status,
                    metrics.requests_total.with_label_values(&[handler, status]),
                    metrics.request_histogram(handler, status),
                ));
            }
        }
        Self { series }
    }

    fn get(&self, handler: &str, status: &str) -> Option<(&IntCounter, &Histogram)> {
        self.series
            .iter()
            .find(|(h, s, _, _)| *h == handler && *s == status)
            .map(|(_, _, c, h)| (c, h))
    }
}

impl std::fmt::Debug for LookupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupService")
            .field("backend", &self.backend.name())
            .field("normalizer", &self.normalizer)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LookupService {
    /// A service answering from `backend`, giving every lookup at most `timeout`.
    ///
    /// Pass `None` only for a backend that keeps a deadline itself, such as
    /// [`crate::cache::CachedBackend`]: arming a timer per request costs more than a
    /// cache hit.
    pub(crate) fn new(
        backend: Arc<dyn LookupBackend>,
        normalizer: Normalizer,
        timeout: impl Into<Option<Duration>>,
        metrics: Metrics,
    ) -> Self {
        let timeout = timeout.into();
        Self {
            backend,
            normalizer,
            timeout,
            overall: timeout,
            series: RequestSeries::new(&metrics),
            metrics,
            error_log: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// Bounds a whole lookup by `deadline`, for a service whose backend keeps the
    /// per-call deadline itself (the cache): an address with an extension asks in
    /// two rounds, and both together must still answer within `LOOKUP_TIMEOUT`.
    #[must_use]
    pub(crate) fn with_overall_deadline(mut self, deadline: Duration) -> Self {
        self.overall = Some(deadline);
        self
    }

    /// The backend answers come from.
    pub(crate) fn backend(&self) -> &Arc<dyn LookupBackend> {
        &self.backend
    }

    /// Answers one request payload (a netstring's content).
    pub(crate) async fn answer(&self, payload: &[u8]) -> Answer {
        let request = match socketmap::parse_request(payload) {
            Ok(r) => r,
            Err(_) => {
                return Answer {
                    reply: Reply::Perm(socketmap::INVALID_REQUEST_FORMAT.into()),
                    handler: HANDLER_INVALID,
                };
            }
        };
        let Some(map) = MapName::parse(request.map) else {
            return Answer {
                reply: Reply::Perm(socketmap::UNKNOWN_MAP_NAME.into()),
                handler: HANDLER_UNKNOWN,
            };
        };
        Answer {
            reply: self.lookup(map, request.key).await,
            handler: map.as_str(),
        }
    }

    /// Looks `key` up in `map`: the request path without parsing. At debug level
    /// one line per request says the map, the key (escaped), the answer and where
    /// it came from (`cache`, `backend`, `stale`, or `none` when the key was
    /// answered without asking), as the Go adapter logs its lookups.
    pub(crate) async fn lookup(&self, map: MapName, key: &[u8]) -> Reply {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return self.lookup_quietly(map, key).await;
        }
        let (reply, source) =
            crate::cache::AnswerSource::track(self.lookup_quietly(map, key)).await;
        tracing::debug!(
            map = map.as_str(),
            key = ?String::from_utf8_lossy(key),
            answer = %String::from_utf8_lossy(&reply.render()),
            source,
            "lookup"
        );
        reply
    }

    async fn lookup_quietly(&self, map: MapName, key: &[u8]) -> Reply {
        let result = match map {
            MapName::Domain => match self.normalizer.domain(key) {
                None => return Reply::NotFound,
                Some(domain) => self
                    .deadline(self.backend.domain_exists(&domain))
                    .await
                    .map(flag_reply),
            },
            MapName::Alias | MapName::Mailbox | MapName::Senders => {
                match self.normalizer.address(key) {
                    Ok(address) => match (self.overall, address.without_extension()) {
                        (Some(limit), Some(_)) => {
                            tokio::time::timeout(limit, self.address_lookup(map, &address))
                                .await
                                .unwrap_or(Err(BackendError::Timeout))
                        }
                        _ => self.address_lookup(map, &address).await,
                    },
                    Err(why) => {
                        // Debug formatting escapes line breaks: a key must never
                        // forge a log line.
                        tracing::debug!(map = map.as_str(), key = ?String::from_utf8_lossy(key), %why, "key cannot be an address, answering NOTFOUND");
                        return Reply::NotFound;
                    }
                }
            }
        };
        match result {
            Ok(reply) => reply,
            Err(err) => {
                self.metrics
                    .backend_errors
                    .with_label_values(&[map.as_str(), err.kind()])
                    .inc();
                if let Some(suppressed) = self.error_log.allow() {
                    if matches!(err, BackendError::InvalidResponse(_)) {
                        tracing::error!(
                            map = map.as_str(),
                            backend = self.backend.name(),
                            error = %err,
                            similar_errors_suppressed = suppressed,
                            "backend answer is not usable, answering TEMP"
                        );
                    } else {
                        tracing::warn!(
                            map = map.as_str(),
                            backend = self.backend.name(),
                            error = %err,
                            similar_errors_suppressed = suppressed,
                            "backend lookup failed, answering TEMP"
                        );
                    }
                }
                Reply::Temp(map.temp_reason().into())
            }
        }
    }

    /// Postfix's order for its own tables (`mail_addr_find.c`): the address as
    /// given first; the address without its extension only when the first is
    /// definitely not found. A backend error at any step is the answer (`TEMP`),
    /// never a reason to try the other form.
    ///
    /// One more rule keeps mail with the right person: an address that exists on
    /// its own is never read as an extension of another address. With
    /// `recipient_delimiter = -`, mail to the mailbox `first-last@` must not follow
    /// the alias `first@`, and `first@`'s owners must not send as `first-last@`
    /// (nor as an alias `first-sales@` of its own that lists no sender).
    async fn address_lookup(&self, map: MapName, key: &AddressKey) -> Result<Reply, BackendError> {
        let Some(stripped) = key.without_extension() else {
            return self.ask(map, key.full()).await;
        };
        let exists_on_its_own = match map {
            MapName::Mailbox => {
                let reply = self.ask(map, key.full()).await?;
                if reply != Reply::NotFound {
                    return Ok(reply);
                }
                false
            }
            MapName::Alias => {
                // Both answers are needed whenever the address is no alias (the
                // common case), so they are asked at once: one round, not two.
                let (reply, mailbox) = tokio::join!(
                    self.ask(map, key.full()),
                    self.deadline(self.backend.mailbox_exists(key.full()))
                );
                let reply = reply?;
                if reply != Reply::NotFound {
                    return Ok(reply);
                }
                mailbox?
            }
            _ => {
                let (reply, mailbox, aliases) = tokio::join!(
                    self.ask(map, key.full()),
                    self.deadline(self.backend.mailbox_exists(key.full())),
                    self.deadline(self.backend.aliases(key.full()))
                );
                let reply = reply?;
                if reply != Reply::NotFound {
                    return Ok(reply);
                }
                mailbox? || aliases?.iter().any(|d| !d.is_empty())
            }
        };
        if exists_on_its_own {
            return Ok(Reply::NotFound);
        }
        self.ask(map, stripped).await
    }

    /// One backend question for one address form.
    async fn ask(&self, map: MapName, address: &Address) -> Result<Reply, BackendError> {
        match map {
            MapName::Alias => {
                let list = self.deadline(self.backend.aliases(address)).await?;
                list_reply(map, list)
            }
            MapName::Senders => {
                let list = self.deadline(self.backend.senders(address)).await?;
                list_reply(map, list)
            }
            MapName::Mailbox => self
                .deadline(self.backend.mailbox_exists(address))
                .await
                .map(flag_reply),
            MapName::Domain => self
                .deadline(self.backend.domain_exists(address.domain()))
                .await
                .map(flag_reply),
        }
    }

    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(BackendError::Timeout)),
            None => call.await,
        }
    }

    /// Records the request metrics once the reply has been written.
    pub(crate) fn record(&self, answer: &Answer, started: Instant) {
        let status = answer.status_label();
        let elapsed = started.elapsed().as_secs_f64();
        match self.series.get(answer.handler, status) {
            Some((counter, histogram)) => {
                counter.inc();
                histogram.observe(elapsed);
            }
            None => {
                self.metrics
                    .requests_total
                    .with_label_values(&[answer.handler, status])
                    .inc();
                self.metrics
                    .request_histogram(answer.handler, status)
                    .observe(elapsed);
            }
        }
    }

    /// The engine's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn flag_reply(found: bool) -> Reply {
    if found {
        Reply::Ok("1".into())
    } else {
        Reply::NotFound
    }
}

/// Joins a list in backend order. Empty entries are dropped: a bare `OK` reads as
/// "not found" in Postfix before 3.12, and an empty destination is never meant.
///
/// Postfix splits the reply at commas and white space, so an entry holding one
/// would become several destinations the data never named (`x@evil.example,
/// root@example.org`): such an answer is an error (`TEMP`), never mail sent
/// somewhere the directory did not clearly say.
fn list_reply(map: MapName, items: Vec<String>) -> Result<Reply, BackendError> {
    let mut joined = String::new();
    for item in items.iter().filter(|i| !i.is_empty()) {
        if let Some(bad) = item
            .chars()
            .find(|&c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(BackendError::InvalidResponse(format!(
                "the {} answer has an entry with {}, which Postfix would split into several",
                map.as_str(),
                match bad {
                    ',' => "a comma",
                    c if c.is_whitespace() => "white space",
                    _ => "a control character",
                }
            )));
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(item);
    }
    Ok(if joined.is_empty() {
        Reply::NotFound
    } else {
        Reply::Ok(joined)
    })
}

#[cfg(test)]
mod tests;
