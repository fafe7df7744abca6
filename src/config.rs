//! Server configuration: the seed's keys, the limits of RFC 6455 processing, and timeouts.
//!
//! Build it with typed setters (`Config::new().max_payload_size(1 << 20)`) or from key/value pairs, as the seed
//! took an associative array ([`Config::from_pairs`]). Unknown keys and bad values are refused by name.
//! [`Config::validate`] runs once when a server starts.

use crate::deflate::DeflateConfig;
use crate::error::ConfigError;
use crate::net::IpNet;
use crate::proxy::MAX_V2_LEN;
use std::path::PathBuf;
use std::time::Duration;

/// Minimum TLS protocol version (used by the TLS layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// A certificate served for one server name (SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// The server name (case-insensitive).
    pub name: String,
    /// PEM file with its chain and key.
    pub pem: PathBuf,
    /// Passphrase of its key, if encrypted (else `ssl_passphrase` is tried).
    pub passphrase: Option<String>,
}

/// The part of a [`Config`] one connection reads: its limits, deadlines and permessage-deflate policy (each field
/// is the `Config` field of the same name; `max_message_size` is the limit in force). [`Config::limits`] makes it.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Limits {
    pub max_handshake_bytes: usize,
    pub handshake_timeout: Duration,
    pub message_timeout: Duration,
    pub close_timeout: Duration,
    pub max_payload_size: usize,
    pub max_message_size: usize,
    pub max_frames_per_message: usize,
    pub write_high_water: usize,
    pub max_frame_out: usize,
    pub idle_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
    pub max_lifetime: Option<Duration>,
    pub deflate: DeflateConfig,
    /// A client may open with the HTTP/2 preface (h2c by prior knowledge): see [`Config::http2`].
    pub http2: bool,
}

/// Server configuration. Every limit is checked before a buffer grows.
#[derive(Debug, Clone)]
pub struct Config {
    /// Incomplete-message timeout (seed key `timeout`, default 5 s): a message whose first fragment arrived and whose
    /// last did not within this time is closed with 1008. One timer per connection.
    pub message_timeout: Duration,
    /// Largest frame payload accepted (seed key `max_payload_size`, default 512 KiB); larger → 1009, refused when
    /// the header arrives.
    pub max_payload_size: usize,
    /// Largest message accepted (key `max_message_size`); `None` means "same as `max_payload_size`". Larger → 1009.
    pub max_message_size: Option<usize>,
    /// Most frames one message may have (seed key `max_messages_buffering`, default 100); more → 1009.
    /// `usize::MAX` (key value `0`) means no limit.
    pub max_frames_per_message: usize,
    /// Largest HTTP request head (key `max_handshake_bytes`, default 8 KiB); larger → 431.
    pub max_handshake_bytes: usize,
    /// Time allowed for the opening handshake (key `handshake_timeout`, default 10 s); then the socket is dropped.
    pub handshake_timeout: Duration,
    /// Time allowed for the peer to answer our close frame (key `close_timeout`, default 5 s); then TCP is dropped.
    pub close_timeout: Duration,
    /// Outbound bytes queued for one connection above which wskit stops reading from it until they drain
    /// (key `write_high_water`, default 1 MiB), so a client that sends but never reads pushes back through TCP.
    pub write_high_water: usize,
    /// Largest frame payload wskit sends (key `max_frame_out`, default 1 MiB; 0 = never split): longer messages go
    /// out as several frames (a compressed one is one deflate stream across them).
    pub max_frame_out: usize,
    /// Production mode (seed key `prod`, default false). In prod, per-frame debug logs are off and invariant checks
    /// that cost time (`debug_assert!`-style) are skipped even in debug builds.
    pub prod: bool,
    /// PEM file with the certificate chain and private key (seed key `ssl_cert`); used by the TLS layer.
    pub ssl_cert: Option<PathBuf>,
    /// Passphrase of an encrypted key in `ssl_cert` (seed key `ssl_passphrase`).
    pub ssl_passphrase: Option<String>,
    /// ALPN protocols offered by TLS (key `ssl_alpn`, comma-separated; default `http/1.1`).
    pub ssl_alpn: Vec<String>,
    /// Minimum TLS version (key `ssl_min_version`: `1.2` or `1.3`; default 1.2).
    pub ssl_min_version: TlsVersion,
    /// More certificates chosen by server name (key `ssl_sni`: `name=path.pem,name2=other.pem`, keys opened with
    /// `ssl_passphrase`); `ssl_cert` serves clients that name no host or another one.
    pub ssl_sni: Vec<SniCert>,
    /// TLS 1.3 session tickets sent after each handshake, for resumption (key `ssl_session_tickets`, default 0).
    ///
    /// Off by default: a ticket costs the server a cache entry and each connection ~90 bytes on the wire, pays off
    /// only when the same client reconnects to the same process, and arrives while the client is writing its
    /// upgrade request, which clients that read and write one TLS socket from two threads mishandle (the Python
    /// `websockets` sync client stalls in about one handshake in 200 against any server that sends tickets,
    /// OpenSSL's included). Set 1 or 2 when clients reconnect often (they skip a full handshake).
    pub ssl_session_tickets: usize,
    /// Close a connection from which nothing arrived for this long, with 1001 (key `idle_timeout`, seconds;
    /// default none).
    pub idle_timeout: Option<Duration>,
    /// Send a ping after this long without hearing from the peer (key `ping_interval`, seconds; default 30 s;
    /// `0` turns keepalive off). Dead peers behind NATs and proxies are found this way.
    pub ping_interval: Option<Duration>,
    /// How long the peer has to answer a keepalive ping (anything it sends counts) before the connection is
    /// closed with 1011 (key `ping_timeout`, seconds; default 30 s).
    pub ping_timeout: Duration,
    /// Close every connection this long after it opened, with 1001, so clients reconnect and spread over servers
    /// (key `max_lifetime`, seconds; default none).
    pub max_lifetime: Option<Duration>,
    /// Most bytes queued for one peer before it counts as a slow consumer and is dropped (reported as 1008)
    /// (key `max_queued_bytes`, default 4 MiB; never less than [`Config::queue_limit`]'s floor). Reading from a peer already pauses at `write_high_water`; this
    /// bounds what sends to it (broadcasts, publishes) may pile up: memory per slow client ≤ this + one turn's sends.
    pub max_queued_bytes: usize,
    /// Origins allowed to open a WebSocket (key `allowed_origins`, comma-separated; default empty = any). Exact
    /// (`https://example.com`) or subdomain wildcard (`https://*.example.com`); others get 403 before `on_open`.
    pub allowed_origins: Vec<String>,
    /// Whether a request without `Origin` (a non-browser client) is allowed when `allowed_origins` is set (key
    /// `allow_missing_origin`, default true: browsers always send it, so the list is what stops cross-site pages).
    pub allow_missing_origin: bool,
    /// Subprotocols the server speaks, in order of preference (key `subprotocols`, comma-separated). The first
    /// one the client offered is answered; [`Ctx::accept_protocol`](crate::Ctx::accept_protocol) overrides it.
    pub subprotocols: Vec<String>,
    /// Refuse (400) a client that offers none of `subprotocols` (key `subprotocol_strict`, default false).
    pub subprotocol_strict: bool,
    /// Most open WebSocket connections; more upgrades get 503 (key `max_connections`, default 0 = no limit but
    /// the descriptor limit, which the accept loop survives).
    pub max_connections: usize,
    /// Most open WebSocket connections from one IP address (IPv6: one /64 network, what one host is given);
    /// more get 429 (key `max_connections_per_ip`, default 256; 0 = no limit). Without a limit one address can
    /// take every descriptor; 256 leaves room for the users of one NAT (see README "Choices").
    pub max_connections_per_ip: usize,
    /// The most memory the server's loops may hold for their connections together (key `memory_budget`, bytes,
    /// default 256 MiB; 0 = no budget): queued output (frames shared by many queues counted once), messages
    /// being assembled, request heads, compression contexts, input waiting for its turn, and the kernel send
    /// buffers of sockets that are full. Past three quarters of it, connections that hold more than 1/256 of it
    /// are not read from and new connections get no compression context; past all of it, the connections with
    /// the most queued are dropped (1008) until it holds again. A [`crate::Cluster`] shares one budget among its
    /// loops. See docs/robustness.md, "The loop-wide budget".
    pub memory_budget: usize,
    /// The kernel send buffer of each accepted socket (key `socket_send_buffer`, bytes; default 0 = the kernel's
    /// autotuning, up to `net.ipv4.tcp_wmem`'s 4 MiB). Linux doubles a value set here for its own bookkeeping.
    /// Kernel buffers are memory too (a container's cgroup is charged for them): the memory budget counts the
    /// buffer of every socket found full, read from the kernel. A fixed 256 KiB held 1 MiB echoes on loopback
    /// ~40 % longer at p99 than autotuning; set it where kernel memory is scarcer than latency.
    pub socket_send_buffer: usize,
    /// Busy-polling (key `busy_poll_us`, microseconds; default 0 = off): before the loop sleeps in the kernel it
    /// asks for readiness without waiting, over and over, for this long. A loop that sleeps must be woken by the
    /// peer's send (on a virtual machine an inter-processor interrupt, tens of µs); one that spins is already
    /// running. It trades a core's idle time for latency: set it where the loop has a core of its own (one
    /// connection in ping-pong: 4× the round trips here). The spin never delays a deadline; an idle loop spins
    /// this long before each sleep, whatever the value (tens of µs are what it is for). A server embedded in the
    /// caller's `Poll` ([`crate::Server::handle_ready`]) never spins: the caller waits. See docs/benchmarks.md.
    pub busy_poll: Duration,
    /// Every accepted connection starts with a PROXY protocol header, version 1 or 2, from a load balancer (key
    /// `proxy_protocol`, default false). The client it names becomes the connection's peer (`Ctx::peer_addr`,
    /// the per-IP limit, logs); a connection without a valid header gets 400 (a TLS listener: closed). Turn it
    /// on only where every client comes through the balancer: whoever can reach the port can name any address.
    /// See [`crate::proxy`].
    pub proxy_protocol: bool,
    /// Serves WebSockets over HTTP/2 too (RFC 8441; key `http2`, default false): TLS listeners offer `h2` by ALPN
    /// ahead of `ssl_alpn`'s protocols, plain ones take a client that starts with the HTTP/2 preface (prior
    /// knowledge, h2c). Each extended CONNECT stream is a connection of its own for the handler; plain requests on
    /// a stream go to `on_http`. See docs/http2.md.
    pub http2: bool,
    /// Proxies whose forwarding header is believed (key `trusted_proxies`, comma-separated addresses or networks:
    /// `127.0.0.1, 10.0.0.0/8`; default empty = none). When a request comes from one of them, the client is the
    /// rightmost address in `forwarded_header` that is not itself a trusted proxy, with port 0 (unknown); it is
    /// the peer for `Ctx::peer_addr`, the per-IP limit and logs. See `policy::forwarded_client`.
    pub trusted_proxies: Vec<IpNet>,
    /// The header trusted proxies name the client in (key `forwarded_header`, default `X-Forwarded-For`; e.g.
    /// `X-Real-IP`).
    pub forwarded_header: String,
    /// permessage-deflate policy (keys `deflate`, `deflate_server_max_window_bits`,
    /// `deflate_client_max_window_bits`, `deflate_server_no_context_takeover`, `deflate_client_no_context_takeover`,
    /// `deflate_level`, `deflate_large_level`, `deflate_large_min`, `deflate_min_size`, `deflate_max_contexts`,
    /// `deflate_dedicated_window_bits`).
    pub deflate: DeflateConfig,
    /// Per-connection rate limits, off by default (keys `rate_messages`, `rate_messages_burst`, `rate_bytes`,
    /// `rate_bytes_burst`, `rate_policy`).
    pub rate_limit: RateLimit,
}

/// Per-connection rate limits on what a client sends: messages and payload bytes (after decompression) a second,
/// each with a burst, measured as a token bucket (GCRA) on the loop's clock. 0 turns a limit off; both are off by
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Messages a second (key `rate_messages`; 0: no limit).
    pub messages: u32,
    /// Messages at once above the rate (key `rate_messages_burst`; 0: one second's worth).
    pub messages_burst: u32,
    /// Payload bytes a second (key `rate_bytes`; 0: no limit).
    pub bytes: u64,
    /// Payload bytes at once above the rate (key `rate_bytes_burst`; 0: one second's worth). A message larger
    /// than the burst passes only with the bucket full.
    pub bytes_burst: u64,
    /// What happens past a limit (key `rate_policy`: `pause` or `close`).
    pub policy: RatePolicy,
}

impl RateLimit {
    /// Whether any limit is set.
    pub fn is_on(&self) -> bool {
        self.messages > 0 || self.bytes > 0
    }

    /// One `rate_*` key of [`Config::set`].
    fn set(&mut self, key: &str, v: &str) -> Result<(), ConfigError> {
        match key {
            "rate_messages" => self.messages = parse_u32(key, v)?,
            "rate_messages_burst" => self.messages_burst = parse_u32(key, v)?,
            "rate_bytes" => self.bytes = parse_usize(key, v)? as u64,
            "rate_bytes_burst" => self.bytes_burst = parse_usize(key, v)? as u64,
            "rate_policy" => {
                self.policy = match v.trim() {
                    "pause" => RatePolicy::Pause,
                    "close" => RatePolicy::Close,
                    _ => return Err(ConfigError::new(key, format!("`{v}` is not `pause` or `close`"))),
                }
            }
            _ => return Err(ConfigError::new(key, "unknown key")),
        }
        Ok(())
    }
}

/// What a connection past its rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RatePolicy {
    /// Shaped: the message is handled, and reading from the connection pauses until it is back within its rate
    /// (TCP then slows the client down). Nothing is lost.
    #[default]
    Pause,
    /// Closed with 1008 (policy violation), the message not handled: for clients that must not exceed the rate.
    Close,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            message_timeout: Duration::from_secs(5),
            max_payload_size: 512 * 1024,
            max_message_size: None,
            max_frames_per_message: 100,
            max_handshake_bytes: 8 * 1024,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            write_high_water: 1024 * 1024,
            max_frame_out: 1 << 20,
            prod: false,
            ssl_cert: None,
            ssl_passphrase: None,
            ssl_alpn: vec!["http/1.1".to_string()],
            ssl_min_version: TlsVersion::Tls12,
            ssl_sni: Vec::new(),
            ssl_session_tickets: 0,
            idle_timeout: None,
            max_queued_bytes: 4 << 20,
            ping_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(30),
            max_lifetime: None,
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
            subprotocols: Vec::new(),
            subprotocol_strict: false,
            max_connections: 0,
            max_connections_per_ip: 256,
            memory_budget: 256 << 20,
            socket_send_buffer: 0,
            busy_poll: Duration::ZERO,
            proxy_protocol: false,
            http2: false,
            trusted_proxies: Vec::new(),
            forwarded_header: "x-forwarded-for".to_string(),
            deflate: DeflateConfig::default(),
            rate_limit: RateLimit::default(),
        }
    }
}

fn parse_secs(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let s: f64 = v.trim().parse().map_err(|_| ConfigError::new(key, format!("`{v}` is not a number of seconds")))?;
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        return Err(ConfigError::new(key, format!("`{v}` must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Seconds, where `0` or an empty value means "off".
fn parse_opt_secs(key: &str, v: &str) -> Result<Option<Duration>, ConfigError> {
    match v.trim() {
        "" | "0" | "0.0" | "off" | "none" => Ok(None),
        _ => parse_secs(key, v).map(Some),
    }
}

fn parse_usize(key: &str, v: &str) -> Result<usize, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::new(key, format!("`{v}` is not a whole number")))
}

fn parse_u32(key: &str, v: &str) -> Result<u32, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::new(key, format!("`{v}` is not a whole number under 2^32")))
}

fn parse_list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::new(key, format!("`{v}` is not a boolean"))),
    }
}

impl Config {
    /// The defaults (the seed's: 5 s message timeout, 512 KiB payloads, 100 frames per message).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a config from key/value pairs, as the seed's associative array did; see each field for its key.
    ///
    /// `masked_writes` is accepted for compatibility only as `false`: RFC 6455 §5.1 forbids a server to mask its
    /// frames, so `true` is refused with an error that says so.
    ///
    /// ```
    /// let c = wskit::Config::from_pairs([("timeout", "2.5"), ("max_payload_size", "1048576")]).unwrap();
    /// assert_eq!(c.max_payload_size, 1 << 20);
    /// assert!(wskit::Config::from_pairs([("max_payload", "1")]).is_err()); // unknown key
    /// ```
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        for (k, v) in pairs {
            c.set(k.as_ref(), v.as_ref())?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Sets one key from its string form.
    pub fn set(&mut self, key: &str, v: &str) -> Result<(), ConfigError> {
        match key {
            "timeout" => self.message_timeout = parse_secs(key, v)?,
            "max_payload_size" => self.max_payload_size = parse_usize(key, v)?,
            "max_message_size" => self.max_message_size = Some(parse_usize(key, v)?),
            "max_messages_buffering" => {
                self.max_frames_per_message = match parse_usize(key, v)? {
                    0 => usize::MAX,
                    n => n,
                }
            }
            "max_handshake_bytes" => self.max_handshake_bytes = parse_usize(key, v)?,
            "handshake_timeout" => self.handshake_timeout = parse_secs(key, v)?,
            "close_timeout" => self.close_timeout = parse_secs(key, v)?,
            "write_high_water" => self.write_high_water = parse_usize(key, v)?,
            "max_frame_out" => self.max_frame_out = parse_usize(key, v)?,
            "prod" => self.prod = parse_bool(key, v)?,
            "masked_writes" => {
                if parse_bool(key, v)? {
                    return Err(ConfigError::new(
                        key,
                        "a server must not mask its frames (RFC 6455 §5.1); only `false` is accepted",
                    ));
                }
            }
            "ssl_cert" => self.ssl_cert = if v.is_empty() { None } else { Some(PathBuf::from(v)) },
            "ssl_passphrase" => self.ssl_passphrase = if v.is_empty() { None } else { Some(v.to_string()) },
            "ssl_alpn" => {
                self.ssl_alpn = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
            }
            "ssl_min_version" => {
                self.ssl_min_version = match v.trim() {
                    "1.2" => TlsVersion::Tls12,
                    "1.3" => TlsVersion::Tls13,
                    _ => return Err(ConfigError::new(key, format!("`{v}` must be 1.2 or 1.3"))),
                }
            }
            "ssl_sni" => {
                self.ssl_sni.clear();
                for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let (name, pem) = entry
                        .split_once('=')
                        .ok_or_else(|| ConfigError::new(key, format!("`{entry}` is not name=path.pem")))?;
                    self.ssl_sni.push(SniCert {
                        name: name.trim().into(),
                        pem: PathBuf::from(pem.trim()),
                        passphrase: None,
                    });
                }
            }
            "ssl_session_tickets" => self.ssl_session_tickets = parse_usize(key, v)?,
            "max_queued_bytes" => self.max_queued_bytes = parse_usize(key, v)?,
            "idle_timeout" => self.idle_timeout = parse_opt_secs(key, v)?,
            "ping_interval" => self.ping_interval = parse_opt_secs(key, v)?,
            "ping_timeout" => self.ping_timeout = parse_secs(key, v)?,
            "max_lifetime" => self.max_lifetime = parse_opt_secs(key, v)?,
            "allowed_origins" => self.allowed_origins = parse_list(v),
            "allow_missing_origin" => self.allow_missing_origin = parse_bool(key, v)?,
            "subprotocols" => self.subprotocols = parse_list(v),
            "subprotocol_strict" => self.subprotocol_strict = parse_bool(key, v)?,
            "max_connections" => self.max_connections = parse_usize(key, v)?,
            "max_connections_per_ip" => self.max_connections_per_ip = parse_usize(key, v)?,
            "memory_budget" => self.memory_budget = parse_usize(key, v)?,
            k if k.starts_with("rate_") => self.rate_limit.set(k, v)?,
            "socket_send_buffer" => self.socket_send_buffer = parse_usize(key, v)?,
            "busy_poll_us" => self.busy_poll = Duration::from_micros(parse_usize(key, v)? as u64),
            "proxy_protocol" => self.proxy_protocol = parse_bool(key, v)?,
            "http2" => self.http2 = parse_bool(key, v)?,
            "trusted_proxies" => {
                self.trusted_proxies = parse_list(v)
                    .iter()
                    .map(|n| n.parse::<IpNet>().map_err(|e| ConfigError::new(key, e)))
                    .collect::<Result<_, _>>()?
            }
            "forwarded_header" => self.forwarded_header = v.trim().to_string(),
            "deflate" => self.deflate.enabled = parse_bool(key, v)?,
            "deflate_server_max_window_bits" => {
                self.deflate.server_max_window_bits = parse_usize(key, v)?.min(255) as u8
            }
            "deflate_client_max_window_bits" => {
                self.deflate.client_max_window_bits = parse_usize(key, v)?.min(255) as u8
            }
            "deflate_server_no_context_takeover" => self.deflate.server_no_context_takeover = parse_bool(key, v)?,
            "deflate_client_no_context_takeover" => self.deflate.client_no_context_takeover = parse_bool(key, v)?,
            "deflate_level" => self.deflate.level = parse_usize(key, v)?.min(u32::MAX as usize) as u32,
            "deflate_large_level" => self.deflate.large_level = parse_usize(key, v)?.min(u32::MAX as usize) as u32,
            "deflate_large_min" => self.deflate.large_min = parse_usize(key, v)?,
            "deflate_min_size" => self.deflate.min_size = parse_usize(key, v)?,
            "deflate_max_contexts" => self.deflate.max_contexts = parse_usize(key, v)?,
            "deflate_dedicated_window_bits" => {
                self.deflate.dedicated_window_bits = parse_usize(key, v)?.min(u8::MAX as usize) as u8
            }
            _ => return Err(ConfigError::new(key, "unknown key")),
        }
        Ok(())
    }

    /// Incomplete-message timeout (seed `timeout`).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.message_timeout = d;
        self
    }
    /// Largest frame payload.
    pub fn max_payload_size(mut self, n: usize) -> Self {
        self.max_payload_size = n;
        self
    }
    /// Largest message.
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = Some(n);
        self
    }
    /// Most frames per message (`usize::MAX` for no limit).
    pub fn max_frames_per_message(mut self, n: usize) -> Self {
        self.max_frames_per_message = n;
        self
    }
    /// Largest request head.
    pub fn max_handshake_bytes(mut self, n: usize) -> Self {
        self.max_handshake_bytes = n;
        self
    }
    /// Opening-handshake timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Closing-handshake timeout.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.close_timeout = d;
        self
    }
    /// Outbound high-water mark.
    pub fn write_high_water(mut self, n: usize) -> Self {
        self.write_high_water = n;
        self
    }
    /// Largest frame payload sent (0: never split a message).
    pub fn max_frame_out(mut self, n: usize) -> Self {
        self.max_frame_out = n;
        self
    }
    /// Production mode.
    pub fn prod(mut self, on: bool) -> Self {
        self.prod = on;
        self
    }

    /// Serves wss with the certificate chain and key in one PEM file (the seed's `ssl_cert`), opening an encrypted
    /// key with `passphrase` (the seed's `ssl_passphrase`).
    pub fn tls_pem(mut self, pem: impl Into<PathBuf>, passphrase: Option<&str>) -> Self {
        self.ssl_cert = Some(pem.into());
        self.ssl_passphrase = passphrase.map(str::to_string);
        self
    }

    /// Adds a certificate served to clients that ask for `name` (SNI).
    pub fn sni_cert(mut self, name: &str, pem: impl Into<PathBuf>, passphrase: Option<&str>) -> Self {
        self.ssl_sni.push(SniCert { name: name.into(), pem: pem.into(), passphrase: passphrase.map(str::to_string) });
        self
    }

    /// Sends `n` TLS 1.3 session tickets after each handshake so returning clients can resume (default 0; see
    /// [`Config::ssl_session_tickets`]).
    pub fn tls_session_tickets(mut self, n: usize) -> Self {
        self.ssl_session_tickets = n;
        self
    }

    /// Sets the idle timeout, the keepalive ping interval and its answer timeout, and the maximum lifetime;
    /// `None` turns each off.
    pub fn liveness(
        mut self,
        idle: Option<Duration>,
        ping_every: Option<Duration>,
        ping_timeout: Duration,
        lifetime: Option<Duration>,
    ) -> Self {
        self.idle_timeout = idle;
        self.ping_interval = ping_every;
        self.ping_timeout = ping_timeout;
        self.max_lifetime = lifetime;
        self
    }

    /// Allows only these origins (exact or `scheme://*.domain`); see [`Config::allowed_origins`].
    pub fn allow_origins<S: Into<String>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The subprotocols spoken, in order of preference; `strict` refuses clients that offer none (400).
    pub fn subprotocols<S: Into<String>>(mut self, protocols: impl IntoIterator<Item = S>, strict: bool) -> Self {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self.subprotocol_strict = strict;
        self
    }

    /// The loop-wide memory budget ([`Config::memory_budget`]; 0: none).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Caps open connections server-wide (503) and per IP (429); 0 is no limit.
    pub fn max_connections(mut self, total: usize, per_ip: usize) -> Self {
        self.max_connections = total;
        self.max_connections_per_ip = per_ip;
        self
    }

    /// Limits what each connection may send: `messages` and payload `bytes` a second (0: no limit), bursts of one
    /// second's worth, and what happens past them (see [`RateLimit`] for the bursts).
    pub fn rate_limit(mut self, messages: u32, bytes: u64, policy: RatePolicy) -> Self {
        self.rate_limit = RateLimit { messages, bytes, policy, ..RateLimit::default() };
        self
    }

    /// Expects a PROXY protocol header (v1 or v2) first on every accepted connection; see
    /// [`Config::proxy_protocol`].
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// Serves WebSockets over HTTP/2 as well (RFC 8441); see [`Config::http2`].
    pub fn http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }

    /// Believes the forwarding header (`forwarded_header`, `X-Forwarded-For` by default) of requests from these
    /// proxies; see [`Config::trusted_proxies`].
    pub fn trusted_proxies(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted_proxies = nets.into_iter().collect();
        self
    }

    /// Turns permessage-deflate negotiation on or off.
    pub fn deflate(mut self, on: bool) -> Self {
        self.deflate.enabled = on;
        self
    }

    /// Queued bytes past which a peer counts as not reading and is dropped: `max_queued_bytes`, but never less
    /// than what one read burst may queue for a connection that reads well — the high-water mark, a burst's work
    /// (1 MiB) and one largest message — so that the echo of a message of the largest size is not taken for a
    /// slow consumer.
    pub fn queue_limit(&self) -> usize {
        self.max_queued_bytes.max(self.write_high_water + (1 << 20) + self.effective_max_message_size())
    }

    /// The message limit in force (`max_message_size`, or `max_payload_size` when unset).
    pub fn effective_max_message_size(&self) -> usize {
        self.max_message_size.unwrap_or(self.max_payload_size)
    }

    /// What one connection reads of this configuration, to share among a loop's connections
    /// ([`crate::Connection::new`] takes it).
    pub fn limits(&self) -> std::sync::Arc<Limits> {
        std::sync::Arc::new(Limits {
            max_handshake_bytes: self.max_handshake_bytes,
            handshake_timeout: self.handshake_timeout,
            message_timeout: self.message_timeout,
            close_timeout: self.close_timeout,
            max_payload_size: self.max_payload_size,
            max_message_size: self.effective_max_message_size(),
            max_frames_per_message: self.max_frames_per_message,
            write_high_water: self.write_high_water,
            max_frame_out: self.max_frame_out,
            idle_timeout: self.idle_timeout,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_lifetime: self.max_lifetime,
            deflate: self.deflate.clone(),
            http2: self.http2,
        })
    }

    /// The most heap memory one connection can make wskit hold, whatever its peer sends, as a function of this
    /// configuration: the formula of `docs/robustness.md`, part by part. It assumes the handler sends a
    /// connection at most what it received from it in the same loop turn (an echo, a reply); sends on top of that
    /// (broadcasts, publishes) are bounded by `max_queued_bytes` at the end of each turn. Kernel socket buffers are
    /// not counted. `tls` adds a wss connection's TLS state.
    ///
    /// ```
    /// let bound = wskit::Config::new().memory_bound(false);
    /// assert!(bound.total() < 12 << 20); // the defaults: ~11 MiB, most of it the outbound queue's
    /// assert!(bound.total() - bound.outbound < 2 << 20);
    /// ```
    pub fn memory_bound(&self, tls: bool) -> MemoryBound {
        const KIB: usize = 1024;
        let deflate = self.deflate.enabled;
        MemoryBound {
            slot: KIB,
            // The PROXY header is read, and its buffer (at most twice its longest: a growing Vec) freed, before the
            // head is.
            handshake: self.max_handshake_bytes.max(if self.proxy_protocol { 2 * (16 + MAX_V2_LEN) } else { 0 }) + KIB,
            message: 2 * self.effective_max_message_size() + if deflate { 64 * KIB } else { 0 },
            inflate: if deflate { crate::deflate::INFLATER_BYTES } else { 0 },
            compressor: match (deflate && !self.deflate.server_no_context_takeover, self.deflate.dedicated_window_bits)
            {
                (false, _) => 0,
                (true, 0) => crate::deflate::compressor_bytes(self.deflate.server_max_window_bits),
                (true, bits) => crate::lz::SmallCompressor::heap_bytes_for(bits),
            },
            control: 2 * KIB,
            outbound: 2 * (self.queue_limit() + 1024 * KIB),
            tls: if tls { 320 * KIB } else { 0 },
        }
    }

    /// Checks the values together; a server runs this once at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_payload_size == 0 {
            return Err(ConfigError::new("max_payload_size", "must be at least 1"));
        }
        if self.effective_max_message_size() < self.max_payload_size {
            return Err(ConfigError::new("max_message_size", "must be at least max_payload_size"));
        }
        if self.max_frames_per_message == 0 {
            return Err(ConfigError::new("max_messages_buffering", "must be at least 1"));
        }
        if self.max_handshake_bytes < 64 {
            return Err(ConfigError::new("max_handshake_bytes", "must be at least 64"));
        }
        if self.write_high_water == 0 {
            return Err(ConfigError::new("write_high_water", "must be at least 1"));
        }
        // Queues are counted in 32 bits per connection.
        if self.max_queued_bytes >= 1 << 31 || self.write_high_water >= 1 << 31 {
            return Err(ConfigError::new("max_queued_bytes", "must be under 2 GiB (and so must write_high_water)"));
        }
        if self.ssl_passphrase.is_some() && self.ssl_cert.is_none() {
            return Err(ConfigError::new("ssl_passphrase", "given without ssl_cert"));
        }
        let d = &self.deflate;
        if d.enabled && !cfg!(feature = "deflate") {
            return Err(ConfigError::new(
                "deflate",
                "wskit was built without permessage-deflate (cargo feature `deflate`)",
            ));
        }
        if !(9..=15).contains(&d.server_max_window_bits) {
            return Err(ConfigError::new("deflate_server_max_window_bits", "must be 9 to 15"));
        }
        if !(8..=15).contains(&d.client_max_window_bits) {
            return Err(ConfigError::new("deflate_client_max_window_bits", "must be 8 to 15"));
        }
        if d.dedicated_window_bits != 0 && !(8..=15).contains(&d.dedicated_window_bits) {
            return Err(ConfigError::new("deflate_dedicated_window_bits", "must be 0 (zlib-rs) or 8 to 15"));
        }
        if d.level > 9 {
            return Err(ConfigError::new("deflate_level", "must be 0 to 9"));
        }
        if d.large_level > 9 {
            return Err(ConfigError::new("deflate_large_level", "must be 0 to 9"));
        }
        if (self.ssl_cert.is_some() || !self.ssl_sni.is_empty()) && !cfg!(feature = "tls") {
            return Err(ConfigError::new("ssl_cert", "wskit was built without TLS support (cargo feature `tls`)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::new();
        assert_eq!(c.message_timeout, Duration::from_secs(5));
        assert_eq!(c.max_payload_size, 524_288);
        assert_eq!(c.max_frames_per_message, 100);
        assert_eq!(c.effective_max_message_size(), 524_288);
        c.validate().unwrap();
    }

    #[test]
    fn pairs_are_checked_by_name() {
        let c = Config::from_pairs([("timeout", "1.5"), ("max_messages_buffering", "0"), ("prod", "true")]).unwrap();
        assert_eq!(c.message_timeout, Duration::from_millis(1500));
        assert_eq!(c.max_frames_per_message, usize::MAX);
        assert!(c.prod);
        let e = Config::from_pairs([("nope", "1")]).unwrap_err();
        assert_eq!(e.key, "nope");
        let e = Config::from_pairs([("max_payload_size", "big")]).unwrap_err();
        assert_eq!(e.key, "max_payload_size");
        let e = Config::from_pairs([("masked_writes", "true")]).unwrap_err();
        assert!(e.to_string().contains("must not mask"), "{e}");
        assert!(Config::from_pairs([("masked_writes", "false")]).is_ok());
        let e = Config::from_pairs([("timeout", "-1")]).unwrap_err();
        assert_eq!(e.key, "timeout");
        let e = Config::from_pairs([("max_payload_size", "10"), ("max_message_size", "5")]).unwrap_err();
        assert_eq!(e.key, "max_message_size");
        let c = Config::from_pairs([
            ("proxy_protocol", "on"),
            ("http2", "on"),
            ("trusted_proxies", "127.0.0.1, 10.0.0.0/8,2001:db8::/32"),
            ("forwarded_header", "X-Real-IP"),
        ])
        .unwrap();
        assert!(c.proxy_protocol && c.http2);
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(c.forwarded_header, "X-Real-IP");
        let e = Config::from_pairs([("trusted_proxies", "10.0.0.0/8, 10.0.0.0/40")]).unwrap_err();
        assert_eq!(e.key, "trusted_proxies");
        assert!(e.to_string().contains("10.0.0.0/40"), "{e}");
        let c = Config::from_pairs([("deflate_large_level", "9"), ("deflate_large_min", "1024")]).unwrap();
        assert_eq!((c.deflate.large_level, c.deflate.large_min), (9, 1024));
        let e = Config::from_pairs([("deflate_large_level", "10")]).unwrap_err();
        assert_eq!(e.key, "deflate_large_level");
    }
}

/// What one connection can hold at most, part by part, in bytes ([`Config::memory_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// The slot, the connection's state and its buffers' headers (an idle connection measures ~0.6 KiB).
    pub slot: usize,
    /// While handshaking: the request head (`max_handshake_bytes`) and the answer, or before them the PROXY
    /// protocol header (`proxy_protocol`).
    pub handshake: usize,
    /// The message being assembled: a growing buffer may be twice the message limit, plus one inflate step
    /// (64 KiB) past it when compressed.
    pub message: usize,
    /// The inflate context: 48 KiB with zlib-rs, whatever the window ([`crate::deflate::INFLATER_BYTES`]).
    pub inflate: usize,
    /// A compressor of its own, without `server_no_context_takeover` (wskit's: 120 KiB at a 15-bit window,
    /// [`crate::lz::SmallCompressor::heap_bytes_for`]; zlib-rs: 4 << window bits + 244 KiB of hash table and
    /// state, [`crate::deflate::compressor_bytes`]); pooled per loop otherwise.
    pub compressor: usize,
    /// Control frames waiting apart from data (pongs coalesce past 1 KiB).
    pub control: usize,
    /// The outbound queue: reading stops at `write_high_water` and the connection is dropped past
    /// [`Config::queue_limit`] at the end of a turn, in which one read burst causes at most a 1 MiB quantum of
    /// work past one message; the queue's buffer may be twice its length.
    pub outbound: usize,
    /// wss: rustls' buffers and up to 256 KiB of ciphertext ahead of the socket.
    pub tls: usize,
}

impl MemoryBound {
    /// The bound: the handshake and the open connection's parts are never held at once.
    pub fn total(&self) -> usize {
        self.slot
            + self.handshake.max(self.message + self.inflate + self.compressor)
            + self.control
            + self.outbound
            + self.tls
    }
}
