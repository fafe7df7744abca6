//! Pieces the harness's binaries share: a counting allocator for the memory figures, the load client's text, and
//! the clients' TLS configuration.

pub mod texts;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the heap bytes live. A binary that reports memory installs it with
/// `#[global_allocator] static A: wskit_bench::Counting = wskit_bench::Counting;` and reads [`live`].
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

/// Heap bytes live under [`Counting`] (0 movement where it is not the global allocator).
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A compressible JSON-like text of `size` bytes, what `load --deflate` sends; `seed` varies the ids so
/// successive messages differ.
pub fn json_text(size: usize, seed: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 64);
    let mut i = seed * 7919;
    while v.len() < size {
        v.extend_from_slice(
            format!(r#"{{"id":{i},"user":"user{}","text":"hello from the load client"}},"#, i % 37).as_bytes(),
        );
        i += 1;
    }
    v.truncate(size);
    v
}

/// A rustls client configuration trusting the certificates of the PEM file `ca`.
pub fn tls_config(ca: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use base64::Engine;
    let text = std::fs::read_to_string(ca).expect("--ca file");
    let mut roots = rustls::RootCertStore::empty();
    let mut body = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
        } else if l.starts_with("-----END CERTIFICATE") {
            let der = base64::engine::general_purpose::STANDARD.decode(&body).unwrap();
            roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
            body.clear();
            inside = false;
        } else if inside {
            body.push_str(l.trim());
        }
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
