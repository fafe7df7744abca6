//! A message sent to many connections (a publish, a broadcast), framed once and queued by reference.
//!
//! A [`PreparedMessage`] frames its payload at most once per way of sending it: plain, or compressed with a
//! fresh context for one (window, level) (permessage-deflate: a message compressed without reference to earlier
//! ones reads the same in every receiver's inflater, whether the server keeps its context there or not; one
//! that keeps it in wskit's compressor forgets its history after such a frame). Each form is a
//! [`SharedFrames`]: the frames, header included, in one reference-counted buffer that every receiver's queue
//! points at, so a publish of 512 KiB to 900 subscribers holds 512 KiB, not 450 MiB. Only a receiver that keeps
//! its context in zlib-rs (`deflate_dedicated_window_bits` 0) gets a copy of its own, compressed for it.
//!
//! An optional gauge counts the bytes of every form alive, for a loop-wide memory budget: it rises when a form is
//! made and falls when the last queue holding it lets go.

use crate::deflate::DeflatePool;
use crate::frame::{write_message, OpCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Frames shared by the queues of every connection that receives them as they are.
pub struct SharedFrames {
    bytes: Box<[u8]>,
    gauge: Option<Arc<AtomicUsize>>,
}

impl SharedFrames {
    /// The frames, headers included, as they go on the wire.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SharedFrames {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.fetch_sub(self.bytes.len(), Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for SharedFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrames").field("len", &self.bytes.len()).finish()
    }
}

/// How a receiver takes a prepared message: plain, or compressed with a fresh context (window bits, level).
pub(crate) type Form = Option<(u8, u32)>;

/// A text or binary message to send to many connections (see the module docs).
#[derive(Debug)]
pub struct PreparedMessage {
    pub(crate) text: bool,
    pub(crate) payload: Vec<u8>,
    forms: Vec<(Form, Arc<SharedFrames>)>,
    compressions: usize,
    gauge: Option<Arc<AtomicUsize>>,
}

impl PreparedMessage {
    /// Prepares a text or binary message.
    pub fn new(text: bool, payload: &[u8]) -> Self {
        PreparedMessage { text, payload: payload.to_vec(), forms: Vec::new(), compressions: 0, gauge: None }
    }

    /// Counts the bytes of its shared forms in `gauge` while any queue holds them.
    pub fn counted(mut self, gauge: Arc<AtomicUsize>) -> Self {
        self.gauge = Some(gauge);
        self
    }

    fn share(&self, bytes: Vec<u8>) -> Arc<SharedFrames> {
        if let Some(g) = &self.gauge {
            g.fetch_add(bytes.len(), Ordering::Relaxed);
        }
        Arc::new(SharedFrames { bytes: bytes.into_boxed_slice(), gauge: self.gauge.clone() })
    }

    /// The frames for `form`, made on first use: plain frames of at most `max_frame` payload bytes, or, for a
    /// compressed form, its compressed frames when compressing shrinks the payload (else the plain ones).
    pub(crate) fn frames(&mut self, form: Form, pool: &mut DeflatePool, max_frame: usize) -> Arc<SharedFrames> {
        if let Some((_, f)) = self.forms.iter().find(|(k, _)| *k == form) {
            return f.clone();
        }
        let op = if self.text { OpCode::Text } else { OpCode::Binary };
        let frames = match form {
            None => {
                let mut out = Vec::with_capacity(self.payload.len() + 14);
                write_message(&mut out, false, op, &self.payload, max_frame);
                self.share(out)
            }
            Some((window, level)) => {
                let mut z = Vec::new();
                pool.compress(window, level, &self.payload, &mut z);
                self.compressions += 1;
                if z.len() < self.payload.len() {
                    let mut out = Vec::with_capacity(z.len() + 14);
                    write_message(&mut out, true, op, &z, max_frame);
                    self.share(out)
                } else {
                    self.frames(None, pool, max_frame)
                }
            }
        };
        self.forms.push((form, frames.clone()));
        frames
    }

    /// How many times it was compressed (one per distinct window and level among the receivers).
    pub fn compressions(&self) -> usize {
        self.compressions
    }
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use super::*;

    #[test]
    fn each_form_is_made_once_and_shared() {
        let mut pool = DeflatePool::new();
        let gauge = Arc::new(AtomicUsize::new(0));
        let mut m = PreparedMessage::new(true, &b"hello world ".repeat(100)).counted(gauge.clone());
        let a = m.frames(Some((15, 1)), &mut pool, 0);
        let b = m.frames(Some((15, 1)), &mut pool, 0);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.bytes()[0], 0xc1, "FIN, RSV1, text");
        m.frames(Some((10, 1)), &mut pool, 0);
        assert_eq!(m.compressions(), 2);
        let plain = m.frames(None, &mut pool, 0);
        assert_eq!(&plain.bytes()[4..16], b"hello world ");
        let held = a.bytes().len();
        assert!(gauge.load(Ordering::Relaxed) > held + 1200);
        drop((m, plain, b));
        assert_eq!(gauge.load(Ordering::Relaxed), held, "only the form still held is counted");
        drop(a);
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn incompressible_payloads_share_the_plain_frames() {
        let mut pool = DeflatePool::new();
        let mut m = PreparedMessage::new(false, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let z = m.frames(Some((15, 1)), &mut pool, 0);
        let p = m.frames(None, &mut pool, 0);
        assert!(Arc::ptr_eq(&z, &p));
        assert_eq!(p.bytes(), [0x82, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
