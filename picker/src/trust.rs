//! Who may report for which endpoint: a report's `endpoint.address` must be the TCP peer's own IP,
//! unless the peer is a trusted proxy (`--trusted-proxies`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An IP network, `10.0.0.0/8` or `fd00::/64`; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses compare as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(a)), self.prefix, 32) == u128::from(u32::from(n))
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(a), self.prefix, 128) == u128::from(n)
            }
            _ => false,
        }
    }
}

/// `bits` of `value` (a `width`-bit address) with everything after the first `prefix` bits cleared.
fn masked(value: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(width - prefix);
    (value >> keep) << keep
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = ip.parse().map_err(|_| {
            format!("{text:?} is not a CIDR (write e.g. 10.0.0.0/8, 192.168.1.7 or fd00::/64)")
        })?;
        let network = canonical(network);
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= width => p,
                _ => {
                    return Err(format!(
                        "{text:?}: the prefix length must be a number within 0..={width}"
                    ));
                }
            },
        };
        let value = match network {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        if masked(value, prefix, width) != value {
            return Err(format!(
                "{text:?} has bits set after its /{prefix} prefix: write the network address"
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip`, with an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a comma-separated list of CIDRs, naming the first bad one.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// Why a peer may not report for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The `endpoint.address` it reported for.
    pub address: String,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint.address {} is not the sender's address {}: a pod may only report for itself (list proxies that push for others in --trusted-proxies)",
            self.address, self.peer
        )
    }
}

/// Whether `peer` may push a report for `address` (`host:port`, already validated): its host is
/// the peer's IP, or the peer is in `trusted`. A host name never matches: only a trusted proxy
/// may report one.
pub fn check_origin(peer: SocketAddr, address: &str, trusted: &[Cidr]) -> Result<(), Untrusted> {
    let peer = canonical(peer.ip());
    if trusted.iter().any(|c| c.contains(peer)) {
        return Ok(());
    }
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(ip) if canonical(ip) == peer => Ok(()),
        _ => Err(Untrusted {
            peer,
            address: address.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.168.1.7/32");
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert!(v6.contains("fd00::42".parse().unwrap()));
        assert!(!v6.contains("fd00:0:0:1::42".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!(parse_list(" 10.0.0.0/8, 127.0.0.1 ").unwrap().len(), 2);
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_reason() {
        for (text, says) in [
            ("ten.0.0.0/8", "is not a CIDR"),
            ("10.0.0.0/33", "within 0..=32"),
            ("10.0.0.1/8", "bits set after"),
            ("fd00::/200", "within 0..=128"),
        ] {
            let err = text.parse::<Cidr>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        assert!(
            parse_list("10.0.0.0/8,nope")
                .unwrap_err()
                .contains("\"nope\"")
        );
    }

    #[test]
    fn a_peer_reports_only_for_its_own_ip_unless_trusted() {
        assert!(check_origin(peer("10.0.0.7"), "10.0.0.7:8000", &[]).is_ok());
        assert!(check_origin(peer("::ffff:10.0.0.7"), "10.0.0.7:8000", &[]).is_ok());
        assert!(check_origin(peer("fd00::7"), "[fd00::7]:8000", &[]).is_ok());
        let err = check_origin(peer("10.0.0.8"), "10.0.0.7:8000", &[]).unwrap_err();
        assert_eq!(err.peer, "10.0.0.8".parse::<IpAddr>().unwrap());
        assert!(err.to_string().contains("10.0.0.7:8000"), "{err}");
        assert!(err.to_string().contains("10.0.0.8"), "{err}");
        assert!(check_origin(peer("10.0.0.8"), "vllm-0.svc:8000", &[]).is_err());
        let mesh = parse_list("10.0.0.0/24").unwrap();
        assert!(check_origin(peer("10.0.0.8"), "10.0.0.7:8000", &mesh).is_ok());
        assert!(check_origin(peer("10.0.0.8"), "vllm-0.svc:8000", &mesh).is_ok());
        assert!(check_origin(peer("10.0.1.8"), "10.0.0.7:8000", &mesh).is_err());
    }
}
