//! The loops of one node as the loops, the cluster and a bridge see them: the [`Bridge`] trait that carries
//! topics between nodes, the [`Inbound`] side it delivers through, and the group state every loop shares (the
//! loops' handles, which loops want which topic, the memory all of them hold). Below the server and the cluster.

use crate::close::CloseCode;
use crate::conn::Message;
use crate::handle::ServerHandle;
use crate::handler::{ConnId, Origin};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

/// Carries topics between nodes (processes or machines). Implementations MUST NOT block the caller: the loops
/// call [`Bridge::publish`] and [`Bridge::interest`] on their own threads.
pub trait Bridge: Send + Sync {
    /// Begins bridging; what other nodes publish is handed to `inbound`.
    fn start(&self, inbound: Inbound) -> io::Result<()>;
    /// A message published on this node, for the other nodes.
    fn publish(&self, topic: &str, text: bool, payload: &[u8]);
    /// This node now has (`on`) or no longer has local subscribers to `topic`.
    fn interest(&self, topic: &str, on: bool);
    /// The bridge's own metrics in the Prometheus text format (appended to the cluster's).
    fn metrics_text(&self) -> String {
        String::new()
    }
    /// Stops bridging (called when the cluster shuts down).
    fn stop(&self) {}
}

/// What an endpoint asks of the other loops of its node, and through them of the bridge: the one interface
/// between an [`crate::Endpoint`] and a [`crate::Cluster`]. [`Group`] implements it; a test may join endpoints
/// with its own.
pub(crate) trait Siblings: Send + Sync {
    /// How many loops the node has.
    fn loops(&self) -> usize;
    /// A publish made on loop `from`: for every other loop and the bridge.
    fn forward(&self, from: usize, topic: &str, text: bool, except: Option<ConnId>, payload: &[u8]);
    /// Loop's first subscriber to `topic` came (`on`), or its last left.
    fn interest(&self, topic: &str, on: bool);
    /// A handler's send to a connection of another loop.
    fn send_to_loop(&self, to: ConnId, text: bool, payload: &[u8]);
    /// A handler's close of a connection of another loop.
    fn close_on_loop(&self, to: ConnId, code: CloseCode, reason: &str);
    /// Bytes all loops hold for their connections (each loop adds its change at the end of its turns).
    fn held(&self) -> &std::sync::atomic::AtomicUsize;
}

/// The loops of one node, as the loops and the bridge see them.
pub(crate) struct Group {
    pub(crate) loops: OnceLock<Vec<ServerHandle>>,
    /// How many loops have local subscribers, by topic.
    pub(crate) interest: Mutex<HashMap<Box<str>, u32>>,
    pub(crate) bridge: Option<Arc<dyn Bridge>>,
    /// Bytes all loops hold for their connections, as the memory budget counts them (each loop adds its change
    /// at the end of its turns).
    pub(crate) held: std::sync::atomic::AtomicUsize,
}

pub(crate) fn queue_publish(
    l: &ServerHandle,
    topic: &str,
    text: bool,
    except: Option<ConnId>,
    payload: &[u8],
    origin: Origin,
) {
    l.shared.push(|q| q.publish(topic, text, except, origin, payload));
}

impl Siblings for Group {
    /// How many loops the group has.
    fn loops(&self) -> usize {
        self.loops.get().map_or(1, Vec::len)
    }

    /// A publish made on loop `from`: queued to every other loop and handed to the bridge.
    fn forward(&self, from: usize, topic: &str, text: bool, except: Option<ConnId>, payload: &[u8]) {
        if let Some(loops) = self.loops.get() {
            for (i, l) in loops.iter().enumerate() {
                if i != from {
                    queue_publish(l, topic, text, except, payload, Origin::Loop);
                }
            }
        }
        if let Some(b) = &self.bridge {
            b.publish(topic, text, payload);
        }
    }

    /// A loop gained its first or lost its last subscriber to `topic`.
    fn interest(&self, topic: &str, on: bool) {
        let mut map = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        let node_changed = if on {
            let n = map.entry(topic.into()).or_insert(0);
            *n += 1;
            *n == 1
        } else {
            match map.get_mut(topic) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    map.remove(topic);
                    true
                }
                None => false,
            }
        };
        if node_changed {
            if let Some(b) = &self.bridge {
                b.interest(topic, on);
            }
        }
    }

    /// A handler's send to a connection of another loop.
    fn send_to_loop(&self, to: ConnId, text: bool, payload: &[u8]) {
        if let Some(l) = self.loop_of(to) {
            l.shared.push(|q| q.message(to, text, payload));
        }
    }

    /// A handler's close of a connection of another loop.
    fn close_on_loop(&self, to: ConnId, code: CloseCode, reason: &str) {
        if let Some(l) = self.loop_of(to) {
            l.shared.push(|q| q.close(to, code, reason));
        }
    }

    fn held(&self) -> &std::sync::atomic::AtomicUsize {
        &self.held
    }
}

impl Group {
    /// Topics with local subscribers on this node now.
    pub(crate) fn topics(&self) -> Vec<String> {
        self.interest.lock().unwrap_or_else(|p| p.into_inner()).keys().map(|k| k.to_string()).collect()
    }

    pub(crate) fn loop_of(&self, id: ConnId) -> Option<&ServerHandle> {
        self.loops.get()?.get(id.loop_index() as usize)
    }
}

/// How a bridge hands messages from other nodes to this node's subscribers.
#[derive(Clone)]
pub struct Inbound {
    pub(crate) group: Arc<Group>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

impl Inbound {
    /// Delivers a message another node published to the subscribers of `topic` on every loop here (it is not
    /// bridged again).
    pub fn deliver(&self, topic: &str, msg: Message<'_>) {
        if let Some(loops) = self.group.loops.get() {
            for l in loops {
                queue_publish(l, topic, msg.is_text(), None, msg.as_bytes(), Origin::Bridge);
            }
        }
    }
    /// The topics this node has local subscribers to (a bridge resubscribes to them after reconnecting).
    pub fn topics(&self) -> Vec<String> {
        self.group.topics()
    }
}
