//! Heap allocations per echoed message in steady state, counted by a global allocator on the server's thread
//! only: zero at 20 B and 16 KiB without permessage-deflate (asserted), and the count with it (reported).
//! Here and not in the root crate because a global allocator needs `unsafe impl` and wskit forbids unsafe code.
//! `cargo test --release -p wskit-bench --test alloc -- --nocapture`
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use wskit::frame::{write_client_frame, OpCode};
use wskit::{Config, Ctx, Handler, Message, Server};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether allocations on this thread are counted (only the server's, while measuring).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTED.with(|c| c.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only an atomic and a
// const-initialised thread-local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract is forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Echo;
impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
}

/// Echoes `n` messages of `size` bytes after `warm` unmeasured ones; returns the allocations counted on the
/// server's thread while the `n` went through.
fn allocations(config: Config, deflate: bool, size: usize, warm: usize, n: usize) -> u64 {
    let measure = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (m, s) = (measure.clone(), stop.clone());
    let server = std::thread::spawn(move || {
        let mut server = Server::bind("127.0.0.1:0", config, Echo).unwrap();
        tx.send(server.local_addr()).unwrap();
        while !s.load(Ordering::Relaxed) {
            COUNTED.with(|c| c.set(m.load(Ordering::SeqCst)));
            server.poll_once(Some(Duration::from_millis(10))).unwrap();
        }
        COUNTED.with(|c| c.set(false));
    });
    let addr = rx.recv().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let ext = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n" } else { "" };
    write!(
        c,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let text: Vec<u8> = (0..size).map(|i| b"abcdefgh"[i % 8]).collect();
    let mut frame = Vec::new();
    if deflate {
        let mut z = Vec::new();
        wskit::deflate::Compressor::new(6, 15).compress(&text, &mut z);
        write_client_frame(&mut frame, true, 0b100, OpCode::Text, [1, 2, 3, 4], &z);
    } else {
        write_client_frame(&mut frame, true, 0, OpCode::Text, [1, 2, 3, 4], &text);
    }
    let mut buf = vec![0u8; size + 64];
    let mut echo = |c: &mut TcpStream| {
        c.write_all(&frame).unwrap();
        // Read one frame: header, then its payload.
        c.read_exact(&mut buf[..2]).unwrap();
        let len = match buf[1] & 0x7f {
            126 => {
                c.read_exact(&mut buf[..2]).unwrap();
                u16::from_be_bytes([buf[0], buf[1]]) as usize
            }
            127 => {
                c.read_exact(&mut buf[..8]).unwrap();
                u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize
            }
            n => n as usize,
        };
        c.read_exact(&mut buf[..len]).unwrap();
    };
    for _ in 0..warm {
        echo(&mut c);
    }
    measure.store(true, Ordering::SeqCst);
    // The server picks the flag up at its next turn: one echo to be sure, then the counted ones.
    echo(&mut c);
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..n {
        echo(&mut c);
    }
    let counted = ALLOCS.load(Ordering::SeqCst) - before;
    measure.store(false, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    drop(c);
    server.join().unwrap();
    counted
}

#[test]
fn zero_allocations_per_echoed_message_in_steady_state() {
    let plain = || Config::new().deflate(false);
    let small = allocations(plain(), false, 20, 1000, 10_000);
    let large = allocations(plain(), false, 16 * 1024, 1000, 5_000);
    let deflated = allocations(Config::new(), true, 1024, 1000, 5_000);
    eprintln!(
        "allocations on the server thread: {small} in 10,000 echoes of 20 B, {large} in 5,000 of 16 KiB \
         (deflate off); {deflated} in 5,000 compressed echoes of 1 KiB ({:.2} per message)",
        deflated as f64 / 5000.0
    );
    assert_eq!(small, 0, "allocations while echoing 20-byte messages");
    assert_eq!(large, 0, "allocations while echoing 16 KiB messages");
}
