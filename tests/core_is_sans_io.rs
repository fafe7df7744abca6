//! The protocol core must not name sockets, mio, the clock or the handler, and the endpoint above it (which
//! calls the handler) must not name sockets, mio or the clock: only the shell (`src/server.rs`) does I/O.

const CORE: &[&str] = &[
    "close.rs",
    "config.rs",
    "conn/mod.rs",
    "conn/opening.rs",
    "conn/receive.rs",
    "conn/send.rs",
    "conn/timers.rs",
    "deflate.rs",
    "error.rs",
    "frame.rs",
    "h2/mod.rs",
    "h2/frame.rs",
    "h2/hpack.rs",
    "h2/conn.rs",
    "handshake.rs",
    "mask.rs",
    "net.rs",
    "policy.rs",
    "prepared.rs",
    "proxy.rs",
    "tls.rs",
    "utf8.rs",
];
/// The endpoint: every connection of a loop, the handler's calls included, and still no I/O.
const ENDPOINT: &[&str] = &[
    "endpoint/mod.rs",
    "endpoint/commands.rs",
    "endpoint/deferred.rs",
    "endpoint/events.rs",
    "endpoint/h2.rs",
    "endpoint/rate.rs",
    "endpoint/read.rs",
    "endpoint/slot.rs",
    "endpoint/steady.rs",
    "endpoint/timers.rs",
    "endpoint/turn.rs",
    "endpoint/write.rs",
    "handle.rs",
    "group.rs",
];
const FORBIDDEN: &[&str] = &[
    "mio",
    "std::net",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "Instant::now",
    "SystemTime::now",
    "Handler",
    "std::thread",
];

/// Lines of the listed files (above their unit tests) that name any of `forbidden`.
fn faults(files: &[&str], forbidden: &[&str]) -> Vec<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut faults = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(src.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Unit tests at the end of a file may use the clock; the code above them may not.
        for (n, line) in text.lines().enumerate().take_while(|(_, l)| l.trim() != "#[cfg(test)]") {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    faults.push(format!("src/{file}:{}: names `{word}`: {}", n + 1, line.trim()));
                }
            }
        }
    }
    faults
}

#[test]
fn core_modules_do_no_io() {
    let faults = faults(CORE, FORBIDDEN);
    assert!(faults.is_empty(), "the sans-I/O core does I/O:\n{}", faults.join("\n"));
}

#[test]
fn the_endpoint_does_no_io() {
    // The endpoint calls the handler; it may name it, and nothing else on the list.
    let forbidden: Vec<&str> = FORBIDDEN.iter().copied().filter(|w| *w != "Handler").collect();
    let faults = faults(ENDPOINT, &forbidden);
    assert!(faults.is_empty(), "the endpoint does I/O:\n{}", faults.join("\n"));
    // Every file of the endpoint is on the list.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/endpoint");
    for e in std::fs::read_dir(dir).unwrap() {
        let name = format!("endpoint/{}", e.unwrap().file_name().to_string_lossy());
        assert!(ENDPOINT.contains(&name.as_str()), "{name} is not checked");
    }
}

#[test]
fn the_check_itself_catches_a_violation() {
    // Guard against a check that cannot fail: the shell names all of these, and the check finds them there.
    let shell =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server.rs")).unwrap();
    for word in ["mio", "std::net", "Instant::now", "Handler"] {
        assert!(shell.contains(word), "the shell (src/server.rs) should name {word}");
        assert!(!faults(&["server.rs"], &[word]).is_empty(), "the check misses {word} in the shell");
    }
}
