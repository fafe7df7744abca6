//! The send queue: bytes for the peer (`out`, then owned and shared segments), the control frames that wait for
//! its next frame boundary, and the large buffer in passing. A connection holds it boxed, and only while it holds
//! something ([`Queue::is_bare`]): the steady echo writes straight from the read buffer and an idle connection
//! queues nothing, so neither pays for the queue's 64 bytes in every slot.

use super::*;

/// The queue after `out` (see [`Connection::send_shared`]): segments in wire order, each starting at a frame
/// boundary. While `out` is empty the front segment is the head, and it is always a shared one (owned ones are
/// moved into `out` as they come to the front); appends go to the back.
#[derive(Debug, Default)]
pub(super) struct Tail {
    pub(super) segs: VecDeque<Seg>,
    /// Bytes in `segs` not yet written.
    pub(super) bytes: usize,
    /// Bytes of the owned segments.
    pub(super) own: usize,
    /// Bytes of the front segment already written (only while it is the head).
    pub(super) head_off: usize,
}

#[derive(Debug)]
pub(super) enum Seg {
    Own(Vec<u8>),
    Shared(Arc<SharedFrames>),
}

impl Seg {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Seg::Own(v) => v,
            Seg::Shared(f) => f.bytes(),
        }
    }
}

impl Tail {
    /// The owned segment at the back, made if the back is shared.
    pub(super) fn back_own(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segs.back(), Some(Seg::Own(_))) {
            self.segs.push_back(Seg::Own(Vec::new()));
        }
        match self.segs.back_mut() {
            Some(Seg::Own(v)) => v,
            _ => unreachable!("just pushed"),
        }
    }
}

/// What a connection queues for its peer.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Bytes for the peer, owned: the whole queue, or its head segment once shared frames are queued (`tail`).
    /// Its first `out_start` bytes are written already (a partial write moves the start, not the bytes); empty
    /// (and `out_start` 0) once all of it is.
    pub(super) out: Vec<u8>,
    pub(super) out_start: u32,
    /// Part of `ctrl` has been written (its head frame is in flight).
    pub(super) ctrl_started: bool,
    /// What is queued after `out` once a message shared with other connections was queued
    /// ([`Connection::send_shared`]); boxed, and only then.
    pub(super) tail: Option<Box<Tail>>,
    /// Control frames (pongs, keepalive pings) waiting for the next frame boundary of `out`, so they never wait
    /// behind megabytes of queued data.
    pub(super) ctrl: Spill<u8>,
    /// Bytes of the frame at the head of `out` not yet written (0: `out` starts at a frame boundary);
    /// `usize::MAX` while `out` holds HTTP (before the upgrade, or instead of it).
    pub(super) frame_left: usize,
    /// A large buffer in passing: lent by the shell from its loop-wide pool for the next large message
    /// (assembled or queued), or released here by one (a delivered message, a written queue) for the shell to
    /// take back ([`Connection::lend_buffer`], [`Connection::take_buffer`]). Reusing them spares the page faults
    /// of fresh allocations (for 1 MiB messages that was most of the cost) while an idle connection holds none.
    /// Its contents are an earlier message's, kept so that a read straight into it need not zero it first: every
    /// use empties it, except a message's assembly, which counts them as room ([`InMessage::room`]).
    pub(super) spare: Spare,
}

/// Keeps a large buffer that fell free for the shell to take back ([`Connection::take_buffer`]): in
/// `spare`, the larger of the two; the other in the queue `out` if that is empty and smaller. Keeping only the
/// larger and freeing the other drained the loop's pool by one buffer per 1 MiB echo, so every message then paid
/// fresh pages for its assembly (256 page faults per MiB). Buffers below [`SPARE_MIN`] are freed (and make no
/// queue).
pub(super) fn park(q: &mut Option<Box<Queue>>, buf: Vec<u8>) {
    if buf.capacity() >= SPARE_MIN {
        let q = q.get_or_insert_with(Box::default);
        park_in(&mut q.spare, &mut q.out, buf);
    }
}

/// [`park`] into a queue at hand (`out` may be a throw-away vector: the spare alone is offered then).
pub(super) fn park_in(spare: &mut Spare, out: &mut Vec<u8>, mut buf: Vec<u8>) {
    if buf.capacity() < SPARE_MIN {
        return;
    }
    // (Of two alike, the spare keeps the one with more old bytes: room to read into without zeroing.)
    if (buf.capacity(), buf.len()) > (spare.capacity(), spare.len()) {
        buf = spare.replace(buf);
    }
    if buf.capacity() >= SPARE_MIN && out.is_empty() && buf.capacity() > out.capacity() {
        buf.clear();
        *out = buf;
    }
}

/// The large buffer a queue holds in passing, taken out (an empty vector when there is none).
pub(super) fn take_spare(q: &mut Option<Box<Queue>>) -> Vec<u8> {
    q.as_deref_mut().map_or_else(Vec::new, |q| q.spare.take())
}

impl Queue {
    /// It holds nothing at all, not even capacity: the connection can drop it.
    #[inline]
    pub(super) fn is_bare(&self) -> bool {
        self.out.capacity() == 0 && self.ctrl.is_empty() && self.tail.is_none() && !self.spare.is_some()
    }

    /// Bytes wait to be written.
    #[inline]
    pub(super) fn wants_write(&self) -> bool {
        !self.out.is_empty() || !self.ctrl.is_empty() || self.tail.is_some()
    }

    /// See [`Connection::out`].
    #[inline]
    pub(super) fn head(&self) -> &[u8] {
        if !self.ctrl.is_empty() && self.at_boundary() {
            return self.ctrl.as_slice();
        }
        if self.out.is_empty() {
            if let Some(t) = self.tail.as_deref() {
                return &t.segs[0].bytes()[t.head_off..];
            }
            &self.out
        } else if self.ctrl.is_empty() {
            &self.out[self.out_start as usize..]
        } else {
            let unwritten = &self.out[self.out_start as usize..];
            &unwritten[..self.frame_left.min(unwritten.len())]
        }
    }

    /// Whether the head of the queue is at a frame boundary (a control frame may go first).
    #[inline]
    pub(super) fn at_boundary(&self) -> bool {
        if self.out.is_empty() {
            self.tail.as_deref().map_or(true, |t| t.head_off == 0)
        } else {
            self.frame_left == 0
        }
    }

    /// See [`Connection::out_slices`].
    pub(super) fn slices<'a>(&'a self, dst: &mut [&'a [u8]]) -> usize {
        let head = self.head();
        if head.is_empty() || dst.is_empty() {
            return 0;
        }
        dst[0] = head;
        let Some(t) = self.tail.as_deref().filter(|_| self.ctrl.is_empty()) else { return 1 };
        let mut n = 1;
        for seg in t.segs.iter().skip(usize::from(self.out.is_empty())) {
            if n == dst.len() {
                break;
            }
            dst[n] = seg.bytes();
            n += 1;
        }
        n
    }

    /// Data bytes queued (control frames aside).
    #[inline]
    pub(super) fn data_queued(&self) -> usize {
        self.out.len() - self.out_start as usize + self.tail.as_deref().map_or(0, |t| t.bytes)
    }

    /// Heap bytes: this box and the buffers it owns (shared frames are counted by whoever made them).
    pub(super) fn held(&self) -> usize {
        let mut n = std::mem::size_of::<Queue>() + self.out.capacity() + self.ctrl.heap_bytes();
        n += self.spare.heap_bytes();
        if let Some(t) = self.tail.as_deref() {
            n += t.own + t.segs.capacity() * std::mem::size_of::<Seg>();
        }
        n
    }

    /// Drops the first `n` bytes (they were written). `release`: drop the buffer rather than keep it once all is
    /// written (the one that carried the handshake's answer); it is reset then.
    pub(super) fn consume(&mut self, mut n: usize, release: &mut bool) {
        if self.tail.is_none() {
            return self.consume_head(n, release);
        }
        loop {
            let head = self.head().len();
            if n <= head || head == 0 {
                return self.consume_head(n, release);
            }
            self.consume_head(head, release);
            n -= head;
        }
    }

    /// [`Queue::consume`] within the head.
    fn consume_head(&mut self, n: usize, release: &mut bool) {
        if !self.ctrl.is_empty() && self.at_boundary() {
            if n >= self.ctrl.len() {
                self.ctrl.clear();
                self.ctrl_started = false;
            } else if n > 0 {
                self.ctrl.edit(|c| c.drain(..n).count());
                self.ctrl_started = true;
            }
            return;
        }
        if self.out.is_empty() && self.tail.is_some() {
            return self.consume_shared(n);
        }
        self.advance_frames(n);
        let start = self.out_start as usize + n;
        if start >= self.out.len() {
            self.out_start = 0;
            // No large buffer is kept, nor the one that carried the handshake answer.
            if std::mem::take(release) {
                self.out = Vec::new();
            } else if self.out.capacity() > SPARE_MIN {
                // Not kept by an idle connection: parked for the shell to take back, with the bytes it carried
                // (room for a later read straight into it: see `spare`).
                let buf = std::mem::take(&mut self.out);
                park_in(&mut self.spare, &mut self.out, buf);
            } else {
                self.out.clear();
            }
            self.promote();
        } else if start >= 64 * 1024 && 2 * start >= self.out.len() || start > u32::MAX as usize {
            // The written part is dropped once it is most of the buffer: each byte is moved at most once.
            self.out.drain(..start);
            self.out_start = 0;
        } else {
            self.out_start = start as u32;
        }
    }

    /// `n` bytes of the shared segment at the head were written.
    fn consume_shared(&mut self, n: usize) {
        let Some(t) = self.tail.as_deref_mut() else { return };
        t.head_off += n;
        t.bytes -= n;
        if t.head_off >= t.segs[0].bytes().len() {
            t.segs.pop_front();
            t.head_off = 0;
        }
        self.promote();
    }

    /// With `out` empty: moves the owned segments that reached the front into `out`, and drops the tail once
    /// empty (appends go to `out` again).
    fn promote(&mut self) {
        let Some(t) = self.tail.as_deref_mut() else { return };
        if !self.out.is_empty() || t.head_off > 0 {
            return;
        }
        while let Some(Seg::Own(_)) = t.segs.front() {
            let Some(Seg::Own(v)) = t.segs.pop_front() else { unreachable!() };
            t.bytes -= v.len();
            t.own -= v.len();
            if !v.is_empty() {
                let old = std::mem::replace(&mut self.out, v);
                park_in(&mut self.spare, &mut Vec::new(), old);
                self.frame_left = 0;
                break;
            }
        }
        if t.segs.is_empty() {
            self.tail = None;
        }
    }

    /// Appends owned bytes at the back of the queue: to `out`, or to the tail once shared frames are queued.
    pub(super) fn append(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        match self.tail.as_deref_mut() {
            None => f(&mut self.out),
            Some(t) => {
                let v = t.back_own();
                let before = v.len();
                f(v);
                let added = v.len() - before;
                t.bytes += added;
                t.own += added;
            }
        }
    }

    /// Forgets everything queued (the spare buffer stays).
    pub(super) fn discard(&mut self) {
        self.out.clear();
        self.out_start = 0;
        self.ctrl.clear();
        self.ctrl_started = false;
        self.tail = None;
    }

    /// Moves the frame-boundary tracker over `n` bytes about to be dropped from the head of `out` (whole frames are
    /// always appended, so a boundary is always followed by a complete header).
    fn advance_frames(&mut self, mut n: usize) {
        if self.frame_left == usize::MAX {
            return;
        }
        let mut pos = self.out_start as usize;
        while n > 0 && pos < self.out.len() {
            if self.frame_left == 0 {
                // Our own frames, so the header decodes; were it not to, the rest counts as one unit.
                self.frame_left = match decode_header(&self.out[pos..]) {
                    Ok(Status::Complete((h, used))) => used + h.len as usize,
                    _ => self.out.len() - pos,
                };
            }
            let t = self.frame_left.min(n);
            self.frame_left -= t;
            n -= t;
            pos += t;
        }
    }

    /// See [`Connection::queue_control`].
    pub(super) fn control(&mut self, op: OpCode, payload: &[u8]) {
        if self.frame_left == usize::MAX {
            write_frame(&mut self.out, true, 0, op, payload);
            return;
        }
        if self.ctrl.len() >= 1024 {
            if self.ctrl_started {
                return; // a frame is half written; the next ping gets the pong
            }
            self.ctrl.clear();
        }
        self.ctrl.edit(|c| write_frame(c, true, 0, op, payload));
    }

    /// Before `payload` bytes are queued in frames of at most `max_frame` (0: one frame): an empty, too small
    /// `out` is swapped for the spare buffer if it fits.
    pub(super) fn make_room(&mut self, payload: usize, max_frame: usize) {
        let frames = match max_frame {
            0 => 1,
            max => 1 + payload / max,
        };
        let need = payload + MAX_HEADER_LEN * frames;
        if self.out.is_empty() && self.tail.is_none() && self.out.capacity() < need && self.spare.capacity() >= need {
            self.out = self.spare.replace(std::mem::take(&mut self.out));
            self.out.clear();
        }
    }

    /// The queue is empty and holds a large buffer ([`park`]ed there, or left by a written queue).
    #[inline]
    pub(super) fn out_parked(&self) -> bool {
        self.out.is_empty() && self.out.capacity() >= SPARE_MIN
    }

    /// See [`Connection::take_buffer`].
    pub(super) fn take_buffer(&mut self) -> Option<Vec<u8>> {
        // The spare last: the pool is a stack, and the spare keeps its old bytes (room to read into unzeroed).
        if self.out_parked() {
            return Some(std::mem::take(&mut self.out));
        }
        self.spare.is_some().then(|| self.spare.take())
    }
}
