//! Command-line flags of `netray serve` and the validated configuration built
//! from them.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The Let's Encrypt production directory, used when `--acme-domain` is given
/// without `--acme-directory`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Flags of `netray serve` (flatten them into a clap command).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ServeArgs {
    /// Plain HTTP listen address, `IP:PORT` (`0.0.0.0:80`, `[::]:80`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,

    /// HTTPS listen address, `IP:PORT`; needs --tls-cert/--tls-key or --acme-domain.
    #[arg(long, value_name = "ADDR:PORT")]
    pub https: Option<SocketAddr>,

    /// Network interface the probe engine attaches to (repeatable; default:
    /// the engine picks).
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Highest TTL / hop limit to probe (1-64).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_HOPS,
          value_parser = clap::value_parser!(u8).range(1..=64))]
    pub max_hops: u8,

    /// Probes per TTL (1-10).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PROBES,
          value_parser = clap::value_parser!(u8).range(1..=10))]
    pub probes: u8,

    /// PEM file with the certificate chain for --https (leaf first).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Get the --https certificate from an ACME CA (TLS-ALPN-01 on the
    /// --https port) for this domain (repeatable).
    #[arg(long = "acme-domain", value_name = "DOMAIN")]
    pub acme_domains: Vec<String>,

    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,

    /// Directory that keeps the ACME account and certificates across restarts
    /// (strongly advised: without it every start orders a new certificate).
    #[arg(long, value_name = "DIR")]
    pub acme_cache: Option<PathBuf>,

    /// Contact e-mail for the ACME account (repeatable).
    #[arg(long = "acme-contact", value_name = "EMAIL")]
    pub acme_contacts: Vec<String>,

    /// PEM file with the CA certificate(s) that sign the ACME directory's own
    /// HTTPS certificate, for a private or test CA; replaces the public roots.
    #[arg(long, value_name = "PEM")]
    pub acme_ca_cert: Option<PathBuf>,

    /// Concurrent traces per client address (IPv6: per /64).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_TRACES_PER_CLIENT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_traces_per_client: u32,

    /// Concurrent traces in total.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_TRACES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_traces: u32,

    /// New traces per minute per client address (token bucket; bursts up to N).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE_LIMIT_PER_MINUTE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_minute: u32,

    /// Open connections in total; beyond it new connections are closed at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Open connections per client address (IPv6: per /64); beyond it that
    /// client's new connections are closed at once, others still get in.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,

    /// Seconds a new connection has to send its first complete request head
    /// (TLS handshake included); a connection that sends nothing is closed then.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_FIRST_REQUEST_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub first_request_timeout: u64,

    /// Seconds a connection (HTTP/1.1 keep-alive or HTTP/2, PINGs or not) may
    /// stay open with no request in flight.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,

    /// Once the capture is attached, the probe sockets opened and the
    /// listeners bound, switch to this user (and its primary group) and drop
    /// every capability [default when started as root: nobody].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 64;
const DEFAULT_FIRST_REQUEST_TIMEOUT_SECS: u64 = 15;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
const DEFAULT_MAX_HOPS: u8 = 30;
const DEFAULT_PROBES: u8 = 3;
const DEFAULT_MAX_TRACES_PER_CLIENT: u32 = 4;
const DEFAULT_MAX_TRACES: u32 = 256;
const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 60;

impl Default for ServeArgs {
    /// The same defaults as the command line, with no listener.
    fn default() -> Self {
        Self {
            http: None,
            https: None,
            interfaces: Vec::new(),
            max_hops: DEFAULT_MAX_HOPS,
            probes: DEFAULT_PROBES,
            tls_cert: None,
            tls_key: None,
            acme_domains: Vec::new(),
            acme_directory: None,
            acme_cache: None,
            acme_contacts: Vec::new(),
            acme_ca_cert: None,
            max_traces_per_client: DEFAULT_MAX_TRACES_PER_CLIENT,
            max_traces: DEFAULT_MAX_TRACES,
            rate_limit_per_minute: DEFAULT_RATE_LIMIT_PER_MINUTE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT_SECS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT_SECS,
            user: None,
        }
    }
}

/// What the probe engine needs from the command line; the server only passes
/// it through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Interfaces to attach to (empty: the engine decides).
    pub interfaces: Vec<String>,
    /// Highest TTL to probe (1..=64).
    pub max_hops: u8,
    /// Probes per TTL (1..=10).
    pub probes: u8,
}

/// Admission limits for new traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Concurrent traces per client address (IPv6 clients: per /64).
    pub max_traces_per_client: u32,
    /// Concurrent traces in total.
    pub max_traces: u32,
    /// New traces per minute per client address; also the burst size.
    pub rate_limit_per_minute: u32,
}

/// Where the HTTPS listener's certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// Certificate and key loaded from PEM files at start-up.
    Files {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// The rustls configuration built from them (ALPN: h2, http/1.1).
        config: Arc<rustls::ServerConfig>,
    },
    /// Certificates ordered and renewed over ACME (TLS-ALPN-01).
    Acme(AcmeSettings),
}

/// ACME settings (`--acme-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Domains of the certificate (lower case, no wildcards).
    pub domains: Vec<String>,
    /// The directory URL (`https://...`).
    pub directory: String,
    /// Account and certificate cache directory.
    pub cache: Option<PathBuf>,
    /// Account contacts as URLs (`mailto:...`).
    pub contacts: Vec<String>,
    /// CA certificates trusted for the directory's HTTPS instead of the
    /// public web PKI roots (`--acme-ca-cert`); empty: public roots.
    pub directory_roots: Vec<CertificateDer<'static>>,
}

/// The validated configuration of `netray serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Plain HTTP listen address (port 0: any free port).
    pub http: Option<SocketAddr>,
    /// HTTPS listen address; `Some` exactly when [`Self::tls`] is.
    pub https: Option<SocketAddr>,
    /// Certificate source of the HTTPS listener.
    pub tls: Option<TlsSource>,
    /// Passed through to the probe engine.
    pub engine: EngineConfig,
    /// Admission limits for new traces.
    pub limits: LimitsConfig,
    /// How long a request waits for a trace before giving up.
    pub trace_timeout: Duration,
    /// How long in-flight requests may run on after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Open connections beyond which new ones are closed at once.
    pub max_connections: usize,
    /// Open connections per client key (address, IPv6 /64) beyond which that
    /// client's new ones are closed at once.
    pub max_connections_per_client: u32,
    /// How long a new connection may take to send its first request head.
    pub first_request_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// User to switch to after setup (`--user`); `None`: the default rule
    /// (nobody when root, else stay).
    pub user: Option<String>,
}

impl ServeConfig {
    /// Validates the flags and loads the TLS files. Errors name the flags (and
    /// files) at fault.
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        if args.http.is_none() && args.https.is_none() {
            bail!("nothing to listen on: give --http ADDR:PORT and/or --https ADDR:PORT");
        }
        if let (Some(http), Some(https)) = (args.http, args.https)
            && http == https
            && http.port() != 0
        {
            bail!("--http and --https must not use the same address ({http})");
        }
        if !(1..=64).contains(&args.max_hops) {
            bail!("--max-hops must be between 1 and 64, not {}", args.max_hops);
        }
        if !(1..=10).contains(&args.probes) {
            bail!("--probes must be between 1 and 10, not {}", args.probes);
        }
        for (flag, value) in [
            ("--max-traces-per-client", args.max_traces_per_client),
            ("--max-traces", args.max_traces),
            ("--rate-limit-per-minute", args.rate_limit_per_minute),
            ("--max-connections", args.max_connections),
            (
                "--max-connections-per-client",
                args.max_connections_per_client,
            ),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        for (flag, value) in [
            ("--first-request-timeout", args.first_request_timeout),
            ("--idle-timeout", args.idle_timeout),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1 second");
            }
        }
        for name in &args.interfaces {
            validate_interface(name)?;
        }
        if let Some(user) = &args.user
            && (user.is_empty() || user.contains(['\0', ':', '/']))
        {
            bail!("--user {user:?} is not a user name");
        }

        let tls = tls_source(&args)?;

        Ok(Self {
            http: args.http,
            https: args.https,
            tls,
            engine: EngineConfig {
                interfaces: args.interfaces,
                max_hops: args.max_hops,
                probes: args.probes,
            },
            limits: LimitsConfig {
                max_traces_per_client: args.max_traces_per_client,
                max_traces: args.max_traces,
                rate_limit_per_minute: args.rate_limit_per_minute,
            },
            trace_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            max_connections: args.max_connections as usize,
            max_connections_per_client: args.max_connections_per_client,
            first_request_timeout: Duration::from_secs(args.first_request_timeout),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            user: args.user,
        })
    }
}

fn validate_interface(name: &str) -> anyhow::Result<()> {
    // IFNAMSIZ is 16 including the NUL; '/' and whitespace are never valid.
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("--interface {name:?} is not a valid interface name");
    }
    Ok(())
}

fn tls_source(args: &ServeArgs) -> anyhow::Result<Option<TlsSource>> {
    let files = args.tls_cert.is_some() || args.tls_key.is_some();
    let acme = !args.acme_domains.is_empty();
    let acme_extras = args.acme_directory.is_some()
        || args.acme_cache.is_some()
        || !args.acme_contacts.is_empty()
        || args.acme_ca_cert.is_some();
    if files && acme {
        bail!("--tls-cert/--tls-key and --acme-domain are mutually exclusive");
    }
    if acme_extras && !acme {
        bail!(
            "--acme-directory, --acme-cache, --acme-contact and --acme-ca-cert need --acme-domain"
        );
    }
    // Checked before any file is read, so the error names the real mistake.
    match (args.https.is_some(), files || acme) {
        (true, false) => {
            bail!("--https needs a certificate: give --tls-cert and --tls-key, or --acme-domain")
        }
        (false, true) => {
            bail!("--tls-cert/--tls-key/--acme-domain need an --https ADDR:PORT listener")
        }
        _ => {}
    }
    if files {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (Some(_), None) => bail!("--tls-cert needs --tls-key"),
            _ => bail!("--tls-key needs --tls-cert"),
        };
        let config = super::tls::server_config_from_files(&cert, &key)?;
        return Ok(Some(TlsSource::Files { cert, key, config }));
    }
    if acme {
        return Ok(Some(TlsSource::Acme(acme_settings(args)?)));
    }
    Ok(None)
}

fn acme_settings(args: &ServeArgs) -> anyhow::Result<AcmeSettings> {
    let mut domains = Vec::new();
    for domain in &args.acme_domains {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        validate_domain(&domain)?;
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    let directory = args
        .acme_directory
        .clone()
        .unwrap_or_else(|| LETS_ENCRYPT_DIRECTORY.to_owned());
    if !directory.starts_with("https://") || directory.len() <= "https://".len() {
        bail!("--acme-directory must be an https:// URL, not {directory:?}");
    }
    let mut contacts = Vec::new();
    for contact in &args.acme_contacts {
        let email = contact.strip_prefix("mailto:").unwrap_or(contact);
        let valid = email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !host.contains('@')
        });
        if !valid || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--acme-contact {contact:?} is not an e-mail address");
        }
        contacts.push(format!("mailto:{email}"));
    }
    if let Some(cache) = &args.acme_cache
        && cache.exists()
        && !cache.is_dir()
    {
        bail!("--acme-cache {} is not a directory", cache.display());
    }
    let directory_roots = match &args.acme_ca_cert {
        Some(path) => read_certs(path, "--acme-ca-cert")?,
        None => Vec::new(),
    };
    Ok(AcmeSettings {
        domains,
        directory,
        cache: args.acme_cache.clone(),
        contacts,
        directory_roots,
    })
}

fn validate_domain(domain: &str) -> anyhow::Result<()> {
    if domain.parse::<IpAddr>().is_ok() {
        bail!("--acme-domain {domain:?}: IP addresses are not supported, give a DNS name");
    }
    if domain.contains('*') {
        bail!("--acme-domain {domain:?}: wildcards cannot be validated with TLS-ALPN-01");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        bail!("--acme-domain {domain:?} is not a valid DNS name");
    }
    Ok(())
}

/// Reads every PEM certificate of `path`; `flag` names the flag in errors.
pub(crate) fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read {flag} file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} file {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} file {} contains no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Reads the first PEM private key of `path`; `flag` names the flag in errors.
pub(crate) fn read_key(path: &Path, flag: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read {flag} file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{flag} file {} contains no usable PEM private key: {e}",
            path.display()
        )
    })
}
