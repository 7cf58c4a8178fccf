//! Who may connect: the `ALLOWED_CLIENTS` list of networks, applied to every TCP
//! listener before a connection costs anything.
//!
//! The socketmap port reads the user directory, the policy port can use up or reset
//! any user's quota, and the SASL port checks passwords; none of that is for the
//! Internet. Upstream listened on every interface and let everyone in; we keep its
//! listen defaults for compatibility, but by default admit only loopback and
//! private networks, which covers every ordinary Postfix, compose and Kubernetes
//! setup. UNIX sockets are governed by their file mode instead.

use std::fmt;
use std::net::IpAddr;

/// The networks admitted when `ALLOWED_CLIENTS` is not set.
pub const DEFAULT_ALLOWED_CLIENTS: &str =
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7,fe80::/10";

/// One network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n`, `v6::/n`, or a single address (a host network).
    ///
    /// # Errors
    /// A sentence naming what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                format!("{text:?} is not an IP address or network (CIDR such as 10.0.0.0/8)")
            })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?,
        };
        if addr.is_ipv6() && canonical_ip(addr).is_ipv4() {
            // `::ffff:a.b.c.d/n` is an IPv4 network written the IPv6 way; below /96
            // it would reach beyond the mapped range, which is never meant.
            if prefix < 96 {
                return Err(format!(
                    "{text:?}: an IPv4-mapped network needs a prefix of at least 96 (write the IPv4 network instead)"
                ));
            }
            return Ok(Self {
                addr: canonical_ip(addr),
                prefix: prefix - 96,
            });
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` (already canonical) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => Self::contains_v6(net, ip, self.prefix),
            // An IPv6 network that covers the mapped range (`::/0`, `::ffff:0:0/96`)
            // covers IPv4 peers too, which arrive here as IPv4.
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                Self::contains_v6(net, ip.to_ipv6_mapped(), self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl Network {
    fn contains_v6(net: std::net::Ipv6Addr, ip: std::net::Ipv6Addr, prefix: u8) -> bool {
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        u128::from(net) & mask == u128::from(ip) & mask
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The clients TCP listeners admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedClients {
    /// Everyone (`any`): upstream's behaviour.
    Any,
    /// Only peers in one of these networks.
    Networks(Vec<Network>),
}

impl Default for AllowedClients {
    fn default() -> Self {
        Self::parse(DEFAULT_ALLOWED_CLIENTS).unwrap_or(Self::Any)
    }
}

impl AllowedClients {
    /// Parses a comma-separated list of networks, or `any`.
    ///
    /// # Errors
    /// A sentence naming the first entry that is not a network.
    pub fn parse(list: &str) -> Result<Self, String> {
        let list = list.trim();
        if list.eq_ignore_ascii_case("any") {
            return Ok(Self::Any);
        }
        let networks = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Network::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if networks.is_empty() {
            return Err("no network given (use a list such as 10.0.0.0/8,::1, or any)".into());
        }
        Ok(Self::Networks(networks))
    }

    /// Whether a TCP peer at `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::Networks(nets) => {
                let ip = canonical_ip(ip);
                nets.iter().any(|n| n.contains(ip))
            }
        }
    }
}

impl fmt::Display for AllowedClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Networks(nets) => {
                for (i, n) in nets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{n}")?;
                }
                Ok(())
            }
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports
/// for an IPv4 peer) as the IPv4 address it is; every other address unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_admits_loopback_and_private_networks_only() {
        let d = AllowedClients::default();
        for inside in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "10.20.30.40",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(d.allows(ip(inside)), "{inside}");
        }
        for outside in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "::2",
        ] {
            assert!(!d.allows(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn lists_parse_and_match() {
        let a = AllowedClients::parse(" 192.0.2.0/24 , 2001:db8::/32,198.51.100.7").unwrap();
        assert!(a.allows(ip("192.0.2.200")));
        assert!(!a.allows(ip("192.0.3.1")));
        assert!(a.allows(ip("2001:db8:1::1")));
        assert!(a.allows(ip("198.51.100.7")));
        assert!(!a.allows(ip("198.51.100.8")));
        assert!(a.allows(ip("::ffff:192.0.2.1")), "mapped counts as IPv4");
        assert_eq!(a.to_string(), "192.0.2.0/24,2001:db8::/32,198.51.100.7/32");
        assert_eq!(AllowedClients::parse("ANY").unwrap(), AllowedClients::Any);
        assert!(AllowedClients::parse("any").unwrap().allows(ip("8.8.8.8")));
        let everyone = AllowedClients::parse("0.0.0.0/0,::/0").unwrap();
        assert!(everyone.allows(ip("8.8.8.8")) && everyone.allows(ip("2001:db8::1")));
        let mapped = AllowedClients::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(
            mapped.allows(ip("10.1.2.3")),
            "mapped network counts as IPv4"
        );
        assert!(!mapped.allows(ip("11.1.2.3")));
        // IPv6 networks that cover the mapped range cover IPv4 peers.
        let v6_all = AllowedClients::parse("::/0").unwrap();
        assert!(v6_all.allows(ip("8.8.8.8")) && v6_all.allows(ip("::ffff:8.8.8.8")));
        let mapped_range = AllowedClients::parse("::ffff:0:0/96").unwrap();
        assert!(mapped_range.allows(ip("192.0.2.1")));
        assert!(!mapped_range.allows(ip("2001:db8::1")));
        let v6_only = AllowedClients::parse("2001:db8::/32").unwrap();
        assert!(!v6_only.allows(ip("192.0.2.1")));
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, part) in [
            ("10.0.0.0/33", "0..=32"),
            ("fe80::/129", "0..=128"),
            ("localhost", "not an IP address"),
            ("10.0.0.0/x", "prefix"),
            ("::ffff:10.0.0.0/8", "at least 96"),
            (" , ", "no network"),
        ] {
            let err = AllowedClients::parse(text).unwrap_err();
            assert!(err.contains(part), "{text}: {err}");
        }
    }
}
