// Run: cargo run --release --example echo -- --addr 127.0.0.1:9001 [--max-payload BYTES] [--max-frames N]
//      [--no-deflate] [--pem FILE --passphrase P] [--loops N] [--set KEY=VALUE]...
//
// Echoes every message as received: text as text, binary as binary. This is the server the Autobahn|Testsuite
// runs against. `--max-payload` sets both the frame and the message limit; any number of frames per message is
// allowed unless `--max-frames` is given. permessage-deflate is negotiated unless `--no-deflate` is given.
// `--loops N` runs N event loops on N threads sharing the port (a `Cluster`). `--set` sets any configuration key
// (`Config::set`), e.g. `--set deflate_server_no_context_takeover=true`. With `--pem`, `SIGHUP` reads the PEM file
// again: new handshakes use the new certificate, open connections go on, and a file that does not load is refused
// (the old certificate stays in use).

use std::process::exit;
use wskit::{Cluster, Config, Ctx, Handler, Message, Server};

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("echo: {msg}\nusage: echo [--addr HOST:PORT] [--max-payload BYTES] [--max-frames N] [--no-deflate] [--pem FILE [--passphrase P]] [--loops N] [--set KEY=VALUE]...");
    exit(2)
}

fn main() {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut config = Config::new().max_frames_per_message(usize::MAX);
    let mut pem: Option<String> = None;
    let mut passphrase: Option<String> = None;
    let mut loops = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--addr" => addr = value(),
            "--max-payload" => {
                let n: usize = value().parse().unwrap_or_else(|_| usage("--max-payload takes a number of bytes"));
                config = config.max_payload_size(n).max_message_size(n);
            }
            "--max-frames" => {
                let n: usize = value().parse().unwrap_or_else(|_| usage("--max-frames takes a number"));
                config = config.max_frames_per_message(n);
            }
            "--no-deflate" => config = config.deflate(false),
            "--set" => {
                let pair = value();
                let (k, v) = pair.split_once('=').unwrap_or_else(|| usage("--set takes key=value"));
                config.set(k, v).unwrap_or_else(|e| usage(&e.to_string()));
            }
            "--pem" => pem = Some(value()),
            "--passphrase" => passphrase = Some(value()),
            "--loops" => loops = value().parse().unwrap_or_else(|_| usage("--loops takes a number")),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let tls = pem.is_some();
    let scheme = if tls { "wss" } else { "ws" };
    if let Some(p) = pem {
        config.ssl_cert = Some(p.into());
        config.ssl_passphrase = passphrase;
    }
    if loops > 1 {
        let cluster = Cluster::bind(&addr, config, loops, |_| Echo)
            .unwrap_or_else(|e| fail(&format!("cannot serve on {addr}: {e}")));
        println!("echo: listening on {scheme}://{} ({loops} loops)", cluster.local_addr());
        #[cfg(feature = "tls")]
        if tls {
            let handle = cluster.handle();
            reload_on_sighup(move || handle.reload_tls());
        }
        if let Err(e) = cluster.join() {
            fail(&e.to_string());
        }
        return;
    }
    let mut server =
        Server::bind(&addr, config, Echo).unwrap_or_else(|e| fail(&format!("cannot serve on {addr}: {e}")));
    println!("echo: listening on {scheme}://{}", server.local_addr());
    #[cfg(feature = "tls")]
    if tls {
        let handle = server.handle();
        reload_on_sighup(move || handle.reload_tls());
    }
    if let Err(e) = server.run() {
        fail(&e.to_string());
    }
}

/// On every `SIGHUP`, `reload` (the TLS files read again), its outcome on stdout.
#[cfg(feature = "tls")]
fn reload_on_sighup(reload: impl Fn() -> Result<(), wskit::tls_config::TlsConfigError> + Send + 'static) {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .unwrap_or_else(|e| fail(&format!("cannot handle SIGHUP: {e}")));
    std::thread::spawn(move || {
        for _ in signals.forever() {
            match reload() {
                Ok(()) => println!("echo: SIGHUP: TLS files reloaded; new handshakes use them"),
                Err(e) => println!("echo: SIGHUP: reload refused, the TLS configuration in use is kept: {e}"),
            }
        }
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("echo: {msg}");
    exit(1)
}
