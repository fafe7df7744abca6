//! Python `websockets` (another implementation, from PyPI) as the client: echo of every size, fragments, ping,
//! close codes, and 500 concurrent clients.

mod common;
use common::*;
use wskit::Config;

#[test]
fn python_websockets_echo() {
    if skip_external("python websockets") {
        return;
    }
    let server = TestServer::echo(Config::new().max_payload_size(2 << 20));
    let out = run_python(include_str!("py/echo_client.py"), &[&server.url("/")]);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn five_hundred_concurrent_clients_times_twenty_messages() {
    if skip_external("python websockets") {
        return;
    }
    // 500 clients from one address: past the per-address default (256).
    let server = TestServer::echo(Config::new().max_connections(0, 0));
    let out = run_python(include_str!("py/many_clients.py"), &[&server.url("/"), "500", "20"]);
    assert_eq!(out.trim(), "ok 10000");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || server.connections() == 0),
        "{} left",
        server.connections()
    );
}
