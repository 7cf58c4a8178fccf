//! Caps on password checks in flight, per SMTP client address and in total.
//!
//! A password check is the most expensive thing a client can ask for (the
//! directory hashes the password), and anyone who can reach an SMTP submission
//! port can ask for it without any valid credentials. Beyond the caps a check is
//! refused at once, without asking the backend: the auth connection is dropped and
//! Postfix answers 454 (try again later), exactly as during a backend outage.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Which cap refused a check; the `limit` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// This client address already has its share of checks in flight.
    Client,
    /// All check slots are in use.
    Total,
}

impl Refused {
    /// The `limit` metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Total => "total",
        }
    }
}

/// The caps and the checks in flight.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_client: usize,
    state: Mutex<InFlight>,
}

#[derive(Debug, Default)]
struct InFlight {
    total: usize,
    /// Only clients with a check in flight: at most `max_total` entries.
    per_client: HashMap<Option<IpAddr>, usize>,
}

/// One admitted check; gives its slot back when dropped, however the check ends.
#[derive(Debug)]
#[must_use]
pub(crate) struct Ticket<'a> {
    admission: &'a Admission,
    client: Option<IpAddr>,
}

impl Admission {
    /// At most `max_total` checks in flight, at most `max_per_client` of them for
    /// one client address (checks without an address share one allowance).
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            state: Mutex::new(InFlight::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a check for `client`, or says which cap refuses it.
    pub(crate) fn try_admit(&self, client: Option<IpAddr>) -> Result<Ticket<'_>, Refused> {
        let mut state = self.lock();
        let mine = state.per_client.get(&client).copied().unwrap_or(0);
        if mine >= self.max_per_client {
            return Err(Refused::Client);
        }
        if state.total >= self.max_total {
            return Err(Refused::Total);
        }
        state.total += 1;
        state.per_client.insert(client, mine + 1);
        Ok(Ticket {
            admission: self,
            client,
        })
    }

    /// Checks in flight now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                state.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_client_cap_comes_before_the_total() {
        let a = Admission::new(3, 2);
        let t1 = a.try_admit(ip("192.0.2.1")).unwrap();
        let _t2 = a.try_admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.try_admit(ip("192.0.2.1")).unwrap_err(), Refused::Client);
        let _t3 = a.try_admit(ip("192.0.2.2")).unwrap();
        assert_eq!(a.try_admit(ip("192.0.2.3")).unwrap_err(), Refused::Total);
        drop(t1);
        assert_eq!(a.in_flight(), 2);
        let _t4 = a.try_admit(ip("192.0.2.3")).expect("a slot came back");
    }

    #[test]
    fn slots_come_back_and_the_table_empties() {
        let a = Admission::new(10, 10);
        {
            let _tickets: Vec<_> = (0..10)
                .map(|i| a.try_admit(ip(&format!("192.0.2.{i}"))).unwrap())
                .collect();
            assert_eq!(a.in_flight(), 10);
        }
        assert_eq!(a.in_flight(), 0);
        assert!(a.lock().per_client.is_empty(), "no entries left behind");
    }
}
