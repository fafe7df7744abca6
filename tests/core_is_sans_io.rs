//! The protocol core must not name sockets, mio, the clock or the handler: only the shell (`server/`) does I/O.

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
    "handshake.rs",
    "mask.rs",
    "net.rs",
    "policy.rs",
    "prepared.rs",
    "proxy.rs",
    "tls.rs",
    "utf8.rs",
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

#[test]
fn core_modules_do_no_io() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut faults = Vec::new();
    for file in CORE {
        let text = std::fs::read_to_string(src.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Unit tests at the end of a file may use the clock; the code above them may not.
        for (n, line) in text.lines().enumerate().take_while(|(_, l)| l.trim() != "#[cfg(test)]") {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    faults.push(format!("src/{file}:{}: names `{word}`: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(faults.is_empty(), "the sans-I/O core does I/O:\n{}", faults.join("\n"));
}

#[test]
fn the_check_itself_catches_a_violation() {
    // Guard against a check that cannot fail: the shell names all of these.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let shell: String =
        std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    for word in ["mio", "std::net", "Instant::now", "Handler"] {
        assert!(shell.contains(word), "the shell (src/server/) should name {word}");
    }
}
