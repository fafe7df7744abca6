//! Routing by path ([`Router`]) and typed per-connection state ([`ConnData`]).
//!
//! A [`Router`] is itself a [`Handler`]: it picks a handler by the request path when the upgrade (or a plain HTTP
//! request) arrives, answers 404 before any upgrade when no route matches, and sends every later callback of that
//! connection to the same handler.
//!
//! ```
//! use wskit::{router::Router, Ctx, Handler, Message};
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) { ctx.send(msg); }
//! }
//! struct Chat;
//! impl Handler for Chat {}
//! let router = Router::new().exact("/echo", Echo).prefix("/rooms/", Chat);
//! # let _ = router;
//! ```

use crate::conn::{CloseStatus, Message};
use crate::error::ProtocolError;
use crate::handler::{ConnId, Ctx, Handler, Response};
use crate::handshake::Request;

/// Per-connection values of type `T`, indexed by [`ConnId`] in O(1) (a vector by slot, checked against the
/// id's generation, so a value never leaks to a later connection that reuses the slot). Handlers keep their
/// typed session state here instead of downcasting.
#[derive(Debug, Clone)]
pub struct ConnData<T> {
    slots: Vec<Option<(u32, T)>>,
    len: usize,
}

impl<T> Default for ConnData<T> {
    fn default() -> Self {
        ConnData { slots: Vec::new(), len: 0 }
    }
}

fn parts(id: ConnId) -> (usize, u32) {
    (id.slot(), id.generation())
}

impl<T> ConnData<T> {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }
    /// Stores `value` for `id`, returning the value it replaces.
    pub fn insert(&mut self, id: ConnId, value: T) -> Option<T> {
        let (key, gen) = parts(id);
        if key >= self.slots.len() {
            self.slots.resize_with(key + 1, || None);
        }
        let old = self.slots[key].replace((gen, value));
        match old {
            Some((g, v)) if g == gen => Some(v),
            Some(_) => None,
            None => {
                self.len += 1;
                None
            }
        }
    }
    /// The value stored for `id`.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        let (key, gen) = parts(id);
        self.slots.get(key)?.as_ref().filter(|(g, _)| *g == gen).map(|(_, v)| v)
    }
    /// The value stored for `id`, mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        let (key, gen) = parts(id);
        self.slots.get_mut(key)?.as_mut().filter(|(g, _)| *g == gen).map(|(_, v)| v)
    }
    /// Removes and returns the value stored for `id`.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let (key, gen) = parts(id);
        let slot = self.slots.get_mut(key)?;
        if slot.as_ref().is_some_and(|(g, _)| *g == gen) {
            self.len -= 1;
            return slot.take().map(|(_, v)| v);
        }
        None
    }
    /// How many connections have a value.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no connection has a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Every connection and its value.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, s)| s.as_ref().map(|(g, v)| (ConnId((*g as u64) << 32 | k as u64), v)))
    }
}

enum Route {
    Exact(String),
    Prefix(String),
}

/// Sends each connection to the handler of its path: exact routes first, then the longest matching prefix;
/// no match is `404 Not Found` (for upgrades and plain HTTP alike).
#[derive(Default)]
pub struct Router {
    routes: Vec<(Route, Box<dyn Handler>)>,
    by_conn: ConnData<usize>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<String> = self
            .routes
            .iter()
            .map(|(r, _)| match r {
                Route::Exact(p) => p.clone(),
                Route::Prefix(p) => format!("{p}*"),
            })
            .collect();
        f.debug_struct("Router").field("routes", &paths).field("connections", &self.by_conn.len()).finish()
    }
}

impl Router {
    /// No routes (every request gets 404).
    pub fn new() -> Self {
        Self::default()
    }
    /// Routes requests whose path is exactly `path`.
    pub fn exact(mut self, path: &str, handler: impl Handler + 'static) -> Self {
        self.routes.push((Route::Exact(path.to_string()), Box::new(handler)));
        self
    }
    /// Routes requests whose path starts with `prefix`.
    pub fn prefix(mut self, prefix: &str, handler: impl Handler + 'static) -> Self {
        self.routes.push((Route::Prefix(prefix.to_string()), Box::new(handler)));
        self
    }

    fn find(&self, path: &str) -> Option<usize> {
        let exact = self.routes.iter().position(|(r, _)| matches!(r, Route::Exact(p) if p == path));
        exact.or_else(|| {
            self.routes
                .iter()
                .enumerate()
                .filter_map(|(i, (r, _))| match r {
                    Route::Prefix(p) if path.starts_with(p.as_str()) => Some((p.len(), i)),
                    _ => None,
                })
                .max_by_key(|&(len, i)| (len, std::cmp::Reverse(i)))
                .map(|(_, i)| i)
        })
    }

    fn handler(&mut self, id: ConnId) -> Option<&mut Box<dyn Handler>> {
        let i = *self.by_conn.get(id)?;
        Some(&mut self.routes[i].1)
    }
}

impl Handler for Router {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, req: &Request) {
        let Some(i) = self.find(req.path()) else {
            ctx.reject(404, "not found\n");
            return;
        };
        self.routes[i].1.on_open(ctx, req);
        if !ctx.opening.as_ref().is_some_and(|o| o.decision.is_some()) {
            self.by_conn.insert(ctx.id(), i);
        }
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if let Some(h) = self.handler(ctx.id()) {
            h.on_message(ctx, msg);
        }
    }
    fn on_ping(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) {
        if let Some(h) = self.handler(ctx.id()) {
            h.on_ping(ctx, payload);
        }
    }
    fn on_pong(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) {
        if let Some(h) = self.handler(ctx.id()) {
            h.on_pong(ctx, payload);
        }
    }
    fn on_error(&mut self, ctx: &mut Ctx<'_>, err: &ProtocolError) {
        if let Some(h) = self.handler(ctx.id()) {
            h.on_error(ctx, err);
        }
    }
    fn on_drain(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(h) = self.handler(ctx.id()) {
            h.on_drain(ctx);
        }
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: u64) {
        if let Some(h) = self.handler(ctx.id()) {
            h.on_timer(ctx, timer);
        }
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_>, status: &CloseStatus) {
        if let Some(i) = self.by_conn.remove(ctx.id()) {
            self.routes[i].1.on_close(ctx, status);
        }
    }
    fn on_http(&mut self, ctx: &mut Ctx<'_>, req: &Request) -> Option<Response> {
        match self.find(req.path()) {
            Some(i) => self.routes[i].1.on_http(ctx, req),
            None => Some(Response::new(404, "text/plain; charset=utf-8", "not found\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_data_checks_the_generation() {
        let mut d = ConnData::new();
        let a = ConnId(1 << 32 | 3);
        let b = ConnId(2 << 32 | 3); // the same slot, reused
        assert_eq!(d.insert(a, "a"), None);
        assert_eq!(d.get(a), Some(&"a"));
        assert_eq!(d.get(b), None);
        assert_eq!(d.remove(b), None);
        assert_eq!(d.len(), 1);
        assert_eq!(d.insert(b, "b"), None); // replaces a stale value, not b's
        assert_eq!(d.len(), 1);
        assert_eq!(d.get(a), None);
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![(b, &"b")]);
        assert_eq!(d.remove(b), Some("b"));
        assert!(d.is_empty());
    }

    #[test]
    fn exact_before_longest_prefix() {
        struct H;
        impl Handler for H {}
        let r = Router::new().prefix("/a", H).exact("/a/b", H).prefix("/a/", H).prefix("/", H);
        assert_eq!(r.find("/a/b"), Some(1));
        assert_eq!(r.find("/a/c"), Some(2));
        assert_eq!(r.find("/ab"), Some(0));
        assert_eq!(r.find("/z"), Some(3));
        assert_eq!(Router::new().exact("/x", H).find("/y"), None);
    }
}
