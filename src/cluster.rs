//! One loop per core, and topics across loops and machines.
//!
//! A [`Cluster`] runs N [`Server`] loops on N threads. Each has its own `mio::Poll`, slab and listening socket,
//! all bound to one address with `SO_REUSEPORT`, so the kernel spreads new connections over them; nothing on a
//! loop's hot path takes a lock. What crosses loops goes through the receiving loop's command queue and waker:
//!
//! * **Topics span loops.** A publish on a loop is delivered to that loop's subscribers and queued once to every
//!   other loop (each serialises and compresses it once for its own subscribers) and to the [`Bridge`], if any.
//!   Queues are FIFO, so one publisher's messages to a topic arrive in order everywhere.
//! * **Connection ids are global**: the loop index is in the top 8 bits of the generation, so a
//!   [`ClusterHandle`] (or a handler on another loop) addresses any connection.
//! * **A bridge joins nodes** (processes, machines): the cluster tells it which topics have local subscribers
//!   ([`Bridge::interest`]), hands it each local publish ([`Bridge::publish`]), and it delivers what other nodes
//!   publish through [`Inbound::deliver`]. [`crate::redis::RedisBridge`] does this over Redis pub/sub.

use crate::config::Config;
use crate::conn::Message;
use crate::error::SendError;
use crate::group::{queue_publish, Group};
use crate::handle::ServerHandle;
use crate::handler::{ConnId, Handler, Origin};
use crate::metrics::Metrics;
use crate::server::{Server, ShutdownReport};
use crate::CloseCode;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::group::{Bridge, Inbound};

/// A `Send + Sync` handle to every loop of a [`Cluster`].
#[derive(Clone)]
pub struct ClusterHandle {
    group: Arc<Group>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").field("loops", &self.loops().len()).finish()
    }
}

impl ClusterHandle {
    fn loops(&self) -> &[ServerHandle] {
        self.group.loops.get().map(Vec::as_slice).unwrap_or(&[])
    }
    /// The handle of loop `i`.
    pub fn loop_handle(&self, i: usize) -> Option<ServerHandle> {
        self.loops().get(i).cloned()
    }
    /// Reads the TLS files again and has every loop's new handshakes use them (built once, shared by the
    /// loops); see [`ServerHandle::reload_tls`]. A file that does not load is refused with its error and every
    /// loop keeps the configuration in use.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self) -> Result<(), crate::tls_config::TlsConfigError> {
        let first = self.loops().first().ok_or(crate::tls_config::TlsConfigError::NotTls)?;
        let tls = first.rebuilt_tls()?;
        self.loops().iter().try_for_each(|l| l.set_tls_config(tls.clone()))
    }
    /// How many loops run.
    pub fn loop_count(&self) -> usize {
        self.loops().len()
    }
    /// Sends to a connection on whichever loop holds it.
    pub fn send(&self, to: ConnId, msg: Message<'_>) -> Result<(), SendError> {
        let l = self.group.loop_of(to).ok_or(SendError::NotOpen)?;
        l.send(to, msg)
    }
    /// Accepts an upgrade `on_open` deferred, on whichever loop holds it (see [`ServerHandle::accept`]).
    pub fn accept(&self, id: ConnId, protocol: Option<&str>) {
        if let Some(l) = self.group.loop_of(id) {
            l.accept(id, protocol);
        }
    }
    /// Refuses an upgrade `on_open` deferred, on whichever loop holds it (see [`ServerHandle::reject`]).
    pub fn reject(&self, id: ConnId, status: u16, body: &str) {
        if let Some(l) = self.group.loop_of(id) {
            l.reject(id, status, body);
        }
    }
    /// Starts the closing handshake on a connection on whichever loop holds it.
    pub fn close(&self, to: ConnId, code: CloseCode, reason: &str) -> Result<(), SendError> {
        let l = self.group.loop_of(to).ok_or(SendError::NotOpen)?;
        l.close(to, code, reason)
    }
    /// Whether the connection is open.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.group.loop_of(id).is_some_and(|l| l.is_open(id))
    }
    /// Publishes to a topic's subscribers on every loop and, through the bridge, on every node.
    pub fn publish(&self, topic: &str, msg: Message<'_>) {
        if let Some(first) = self.loops().first() {
            queue_publish(first, topic, msg.is_text(), None, msg.as_bytes(), Origin::Local);
        }
    }
    /// Sends to every open connection of every loop of this node.
    pub fn broadcast(&self, msg: Message<'_>) {
        for l in self.loops() {
            l.broadcast(msg);
        }
    }
    /// Stops every loop.
    pub fn stop(&self) {
        for l in self.loops() {
            l.stop();
        }
        if let Some(b) = &self.group.bridge {
            b.stop();
        }
    }
    /// Graceful shutdown of every loop ([`Server::shutdown`]); [`Cluster::join`] returns the reports.
    pub fn shutdown(&self, grace: Duration) {
        for l in self.loops() {
            l.shutdown(grace);
        }
        if let Some(b) = &self.group.bridge {
            b.stop();
        }
    }
    /// Loop `i`'s metrics.
    pub fn loop_metrics(&self, i: usize) -> Option<&Metrics> {
        self.loops().get(i).map(|s| s.metrics())
    }
    /// Every loop's metrics in the Prometheus text format: each sample summed over the loops, followed by the
    /// same sample per loop (label `loop`), then the bridge's metrics.
    pub fn metrics_text(&self) -> String {
        let texts: Vec<String> = self.loops().iter().map(|s| s.metrics().to_prometheus()).collect();
        let mut out = aggregate(&texts);
        if let Some(b) = &self.group.bridge {
            out.push_str(&b.metrics_text());
        }
        out
    }
}

/// Sums samples with the same name and labels over several renderings of the same metric families, and lists
/// each loop's value with a `loop` label after the sum.
fn aggregate(texts: &[String]) -> String {
    let Some(first) = texts.first() else { return String::new() };
    let per: Vec<Vec<&str>> = texts.iter().map(|t| t.lines().collect()).collect();
    let mut out = String::with_capacity(first.len() * (texts.len() + 1));
    let mut i = 0;
    let lines = &per[0];
    while i < lines.len() {
        if lines[i].starts_with('#') {
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
            continue;
        }
        // A run of samples of one family.
        let start = i;
        while i < lines.len() && !lines[i].starts_with('#') {
            i += 1;
        }
        for (j, line) in lines.iter().enumerate().take(i).skip(start) {
            let (name, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            let sum: f64 = per.iter().filter_map(|p| p.get(j)?.rsplit_once(' ')?.1.parse::<f64>().ok()).sum();
            out.push_str(&format!("{name} {sum}\n"));
        }
        for (l, p) in per.iter().enumerate() {
            for line in p.iter().take(i).skip(start) {
                let (name, v) = line.rsplit_once(' ').unwrap_or((line, "0"));
                let labelled = match name.split_once('{') {
                    Some((n, rest)) => format!("{n}{{loop=\"{l}\",{rest}"),
                    None => format!("{name}{{loop=\"{l}\"}}"),
                };
                out.push_str(&format!("{labelled} {v}\n"));
            }
        }
    }
    out
}

/// N loops on N threads sharing one address (`SO_REUSEPORT`), with topics across them and, with a
/// [`Bridge`], across nodes.
pub struct Cluster {
    handle: ClusterHandle,
    local: SocketAddr,
    threads: Vec<JoinHandle<io::Result<Option<ShutdownReport>>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("local", &self.local).field("loops", &self.threads.len()).finish()
    }
}

impl Cluster {
    /// Starts `loops` loops (at least one) on `addr`; `factory(i)` builds loop `i`'s handler on its thread.
    pub fn bind<H, F>(addr: impl ToSocketAddrs, config: Config, loops: usize, factory: F) -> io::Result<Cluster>
    where
        H: Handler + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        Self::bind_bridged(addr, config, loops, None, factory)
    }

    /// [`Cluster::bind`] with a bridge to other nodes.
    pub fn bind_bridged<H, F>(
        addr: impl ToSocketAddrs,
        config: Config,
        loops: usize,
        bridge: Option<Arc<dyn Bridge>>,
        factory: F,
    ) -> io::Result<Cluster>
    where
        H: Handler + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let loops = loops.clamp(1, 256);
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        #[cfg(feature = "tls")]
        let tls =
            crate::tls_config::server_config(&config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        let first = crate::server::listener(addr, true)?;
        let local = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..loops {
            listeners.push(crate::server::listener(local, true)?);
        }
        let group = Arc::new(Group {
            loops: OnceLock::new(),
            interest: Mutex::new(HashMap::new()),
            bridge,
            held: Default::default(),
        });
        let factory = Arc::new(factory);
        let ready = Arc::new(Barrier::new(loops + 1));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(loops);
        for (i, listener) in listeners.into_iter().enumerate() {
            let (config, group, factory, ready, tx) =
                (config.clone(), group.clone(), factory.clone(), ready.clone(), tx.clone());
            #[cfg(feature = "tls")]
            let tls = tls.clone();
            let t = std::thread::Builder::new().name(format!("wskit-loop-{i}")).spawn(move || {
                let handler = Box::new(factory(i));
                #[cfg(feature = "tls")]
                let made = Server::for_cluster(listener, config, tls, handler, i as u32, group);
                #[cfg(not(feature = "tls"))]
                let made = Server::for_cluster(listener, config, (), handler, i as u32, group);
                let mut server = match made {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send((i, Err(io::Error::new(e.kind(), e.to_string()))));
                        ready.wait();
                        return Err(e);
                    }
                };
                let _ = tx.send((i, Ok(server.handle())));
                // Serve only once every loop knows its siblings.
                ready.wait();
                server.run()
            })?;
            threads.push(t);
        }
        drop(tx);
        let mut shared: Vec<Option<ServerHandle>> = vec![None; loops];
        let mut failed = None;
        for _ in 0..loops {
            match rx.recv() {
                Ok((i, Ok(s))) => shared[i] = Some(s),
                Ok((_, Err(e))) => failed = Some(e),
                Err(_) => failed = Some(io::Error::other("a loop thread died while starting")),
            }
        }
        let all: Vec<ServerHandle> = shared.into_iter().flatten().collect();
        let _ = group.loops.set(all);
        ready.wait();
        let handle = ClusterHandle { group: group.clone() };
        if let Some(e) = failed {
            handle.stop();
            return Err(e);
        }
        if let Some(b) = &group.bridge {
            if let Err(e) = b.start(Inbound { group: group.clone() }) {
                handle.stop();
                return Err(e);
            }
        }
        Ok(Cluster { handle, local, threads })
    }

    /// The address every loop listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle to every loop, usable from any thread.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Waits for every loop to return ([`ClusterHandle::stop`] or [`ClusterHandle::shutdown`]); the shutdown
    /// reports summed over the loops.
    pub fn join(self) -> io::Result<ShutdownReport> {
        let mut total = ShutdownReport::default();
        let mut error = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(Some(r))) => {
                    total.closed_cleanly += r.closed_cleanly;
                    total.closed_otherwise += r.closed_otherwise;
                    total.dropped_at_deadline += r.dropped_at_deadline;
                    total.bytes_unsent += r.bytes_unsent;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => error = Some(e),
                Err(_) => error = Some(io::Error::other("a loop thread panicked")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aggregate_sums_and_labels_each_loop() {
        let a = "# HELP x X.\n# TYPE x counter\nx 1\n# HELP y Y.\n# TYPE y counter\ny{k=\"a\"} 2\ny{k=\"b\"} 3\n";
        let b = "# HELP x X.\n# TYPE x counter\nx 10\n# HELP y Y.\n# TYPE y counter\ny{k=\"a\"} 20\ny{k=\"b\"} 30\n";
        let out = super::aggregate(&[a.to_string(), b.to_string()]);
        let expected = "# HELP x X.\n# TYPE x counter\nx 11\nx{loop=\"0\"} 1\nx{loop=\"1\"} 10\n# HELP y Y.\n# TYPE y counter\ny{k=\"a\"} 22\ny{k=\"b\"} 33\ny{loop=\"0\",k=\"a\"} 2\ny{loop=\"0\",k=\"b\"} 3\ny{loop=\"1\",k=\"a\"} 20\ny{loop=\"1\",k=\"b\"} 30\n";
        assert_eq!(out, expected);
    }
}
