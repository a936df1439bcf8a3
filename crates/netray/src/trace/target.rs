//! `HOST[:PORT]`: parsing and resolution.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};

/// Which address family to trace over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FamilyChoice {
    /// The first address the resolver returns.
    #[default]
    Any,
    /// IPv4 only (`-4`).
    V4,
    /// IPv6 only (`-6`).
    V6,
}

impl FamilyChoice {
    fn accepts(self, addr: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::V4 => addr.is_ipv4(),
            Self::V6 => addr.is_ipv6(),
        }
    }
}

/// A parsed `HOST[:PORT]` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host as given (brackets of an IPv6 literal removed).
    pub host: String,
    /// The port (the default when none was given).
    pub port: u16,
}

impl Target {
    /// Parses `HOST`, `HOST:PORT`, `IPV6`, `[IPV6]` or `[IPV6]:PORT`.
    /// Errors name the argument and what is wrong with it.
    pub fn parse(arg: &str, default_port: u16) -> anyhow::Result<Self> {
        let arg = arg.trim();
        if arg.is_empty() {
            bail!("empty HOST: give a host name or address, e.g. example.com:443");
        }
        let (host, port) = if let Some(rest) = arg.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                bail!("invalid HOST {arg:?}: `[` without a matching `]`");
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => bail!("invalid HOST {arg:?}: expected `:PORT` after `]`"),
                },
            };
            (host, port)
        } else if arg.matches(':').count() > 1 {
            // A bare IPv6 address: it cannot carry a port without brackets.
            (arg, None)
        } else {
            match arg.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (arg, None),
            }
        };
        if host.is_empty() {
            bail!("invalid HOST {arg:?}: the host part is empty");
        }
        if arg.starts_with('[') && host.parse::<std::net::Ipv6Addr>().is_err() {
            bail!("invalid HOST {arg:?}: {host:?} in brackets is not an IPv6 address");
        }
        let port = match port {
            None => default_port,
            Some(text) => match text.parse::<u16>() {
                Ok(0) => bail!("invalid PORT in {arg:?}: port 0 cannot be connected to"),
                Ok(port) => port,
                Err(_) => bail!("invalid PORT {text:?} in {arg:?}: expected a number 1-65535"),
            },
        };
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// Resolves the host (an address literal as is, a name through the
    /// system resolver) and picks the first address of the wanted family.
    pub async fn resolve(&self, family: FamilyChoice) -> anyhow::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            if !family.accepts(ip) {
                bail!(
                    "host {} is an {} address, but {} was asked for",
                    self.host,
                    if ip.is_ipv4() { "IPv4" } else { "IPv6" },
                    if ip.is_ipv4() {
                        "IPv6 (-6)"
                    } else {
                        "IPv4 (-4)"
                    },
                );
            }
            return Ok(SocketAddr::new(ip, self.port));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot resolve host {:?}", self.host))?
            .collect();
        if addrs.is_empty() {
            bail!("cannot resolve host {:?}: no address", self.host);
        }
        addrs
            .iter()
            .copied()
            .find(|addr| family.accepts(addr.ip()))
            .with_context(|| {
                format!(
                    "host {:?} has no {} address (it resolves to {})",
                    self.host,
                    if family == FamilyChoice::V4 {
                        "IPv4"
                    } else {
                        "IPv6"
                    },
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arg: &str) -> anyhow::Result<(String, u16)> {
        Target::parse(arg, 443).map(|t| (t.host, t.port))
    }

    #[test]
    fn hosts_ports_and_ipv6_literals() {
        assert_eq!(parse("example.com").unwrap(), ("example.com".into(), 443));
        assert_eq!(parse("example.com:80").unwrap(), ("example.com".into(), 80));
        assert_eq!(parse("10.0.0.1:8080").unwrap(), ("10.0.0.1".into(), 8080));
        assert_eq!(parse("fd00::2").unwrap(), ("fd00::2".into(), 443));
        assert_eq!(parse("[fd00::2]").unwrap(), ("fd00::2".into(), 443));
        assert_eq!(parse("[fd00::2]:22").unwrap(), ("fd00::2".into(), 22));
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        for (arg, needle) in [
            ("", "empty HOST"),
            (":80", "host part is empty"),
            ("host:0", "port 0"),
            ("host:http", "invalid PORT \"http\""),
            ("host:70000", "invalid PORT \"70000\""),
            ("[fd00::2", "without a matching"),
            ("[fd00::2]x", "expected `:PORT`"),
            ("[example.com]:1", "not an IPv6 address"),
        ] {
            let error = parse(arg).unwrap_err().to_string();
            assert!(error.contains(needle), "{arg:?}: {error}");
        }
    }

    #[tokio::test]
    async fn literals_resolve_without_dns_and_respect_the_family() {
        let t = Target::parse("10.0.0.1:80", 443).unwrap();
        assert_eq!(
            t.resolve(FamilyChoice::Any).await.unwrap(),
            "10.0.0.1:80".parse().unwrap()
        );
        let error = t.resolve(FamilyChoice::V6).await.unwrap_err().to_string();
        assert!(error.contains("-6"), "{error}");
        let t = Target::parse("[fd00::2]:80", 443).unwrap();
        assert!(t.resolve(FamilyChoice::V4).await.is_err());
        assert!(t.resolve(FamilyChoice::V6).await.is_ok());
    }
}
