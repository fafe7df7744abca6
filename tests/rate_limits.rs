//! Per-connection rate limits (`Config::rate_limit`): a client past its rate is shaped (reading pauses, nothing is
//! lost) or closed with 1008, as configured. Clients: `tungstenite`, sending as fast as it can.

mod common;
use common::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::Message as T;
use wskit::{CloseStatus, Config, Ctx, Handler, Message, ProtocolError, RatePolicy};

/// Sends `n` messages of `size` bytes at once (one write each, no waiting), then reads the `n` echoes; returns how
/// long the echoes took to come back, and checks they came in order.
fn flood(url: &str, n: usize, size: usize) -> Duration {
    let (mut ws, _) = ws_connect(url, &[]).unwrap();
    let start = Instant::now();
    for i in 0..n {
        let mut m = vec![(i % 251) as u8; size];
        m[..8.min(size)].copy_from_slice(&(i as u64).to_be_bytes()[..8.min(size)]);
        ws.write(T::binary(m)).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..n {
        let m = ws.read().unwrap().into_data();
        assert_eq!(m.len(), size);
        assert_eq!(&m[..8.min(size)], &(i as u64).to_be_bytes()[..8.min(size)], "echo {i} in order");
    }
    start.elapsed()
}

#[test]
fn past_the_message_rate_reading_pauses_and_nothing_is_lost() {
    // 50 a second after a burst of 10: 110 messages need at least (110 - 10) / 50 = 2 s.
    let mut config = Config::new().rate_limit(50, 0, RatePolicy::Pause);
    config.rate_limit.messages_burst = 10;
    let server = TestServer::echo(config);
    let took = flood(&server.url("/"), 110, 100);
    assert!(took >= Duration::from_millis(1800), "shaped to 50 a second: took {took:?}");
    assert!(took < Duration::from_secs(6), "and not much slower: took {took:?}");
    let m = server.handle.metrics();
    assert!(m.rate_limited_pauses.load(Relaxed) >= 1);
    assert!(m.to_prometheus().contains("wskit_rate_limited_pauses_total"));
    assert_eq!(m.rate_limited_closes.load(Relaxed), 0);

    // Under the rate, nothing waits: another connection's burst of 10 comes back at once.
    let took = flood(&server.url("/"), 10, 100);
    assert!(took < Duration::from_millis(500), "within the burst: {took:?}");
}

#[test]
fn past_the_byte_rate_reading_pauses() {
    // 200 kB a second with a burst of one second's worth: 600 kB need at least 2 s.
    let server = TestServer::echo(Config::new().rate_limit(0, 200_000, RatePolicy::Pause));
    let took = flood(&server.url("/"), 60, 10_000);
    assert!(took >= Duration::from_millis(1800), "shaped to 200 kB a second: took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<(usize, Vec<CloseStatus>)>>);

impl Handler for Seen {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        self.0.lock().unwrap().0 += 1;
        ctx.send(msg);
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, status: &CloseStatus) {
        self.0.lock().unwrap().1.push(status.clone());
    }
}

#[test]
fn past_the_rate_under_the_close_policy_the_client_gets_1008() {
    let mut config = Config::new();
    config.set("rate_messages", "5").unwrap();
    config.set("rate_policy", "close").unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let server = TestServer::start(config, move || s);
    let (mut ws, _) = ws_connect(&server.url("/"), &[]).unwrap();
    for i in 0..20u8 {
        ws.write(T::binary(vec![i; 10])).unwrap();
    }
    ws.flush().unwrap();
    let mut echoed = 0;
    let code = loop {
        match ws.read() {
            Ok(T::Binary(_)) => echoed += 1,
            Ok(T::Close(Some(f))) => break f.code,
            other => panic!("expected echoes then a close, got {other:?}"),
        }
    };
    assert_eq!(code, TCode::Policy, "1008");
    assert_eq!(echoed, 5, "the burst (one second's worth) passes, then the close");
    while ws.read().is_ok() {}
    assert!(wait_until(Duration::from_secs(5), || !seen.0.lock().unwrap().1.is_empty()));
    let (handled, statuses) = seen.0.lock().unwrap().clone();
    assert_eq!(handled, 5, "the message past the limit is not handled");
    assert_eq!(statuses, vec![CloseStatus::Error(ProtocolError::RateLimited)]);
    assert_eq!(server.handle.metrics().rate_limited_closes.load(Relaxed), 1);

    // A client within its rate is not touched.
    let (mut calm, _) = ws_connect(&server.url("/"), &[]).unwrap();
    for i in 0..3u8 {
        calm.send(T::binary(vec![i])).unwrap();
        assert_eq!(calm.read().unwrap(), T::binary(vec![i]));
    }
}

#[test]
fn rate_keys_parse_and_refuse_bad_values() {
    let mut c = Config::new();
    for (k, v) in [
        ("rate_messages", "100"),
        ("rate_messages_burst", "20"),
        ("rate_bytes", "1048576"),
        ("rate_bytes_burst", "4194304"),
        ("rate_policy", "pause"),
    ] {
        c.set(k, v).unwrap();
    }
    assert_eq!(
        c.rate_limit,
        wskit::RateLimit {
            messages: 100,
            messages_burst: 20,
            bytes: 1 << 20,
            bytes_burst: 4 << 20,
            policy: RatePolicy::Pause
        }
    );
    assert!(c.rate_limit.is_on());
    assert!(!Config::new().rate_limit.is_on(), "off by default");
    let e = c.set("rate_policy", "drop").unwrap_err();
    assert_eq!(e.key, "rate_policy");
    assert!(c.set("rate_messages", "-1").is_err());
}
