//! Listening sockets passed by systemd (SPEC §10), what `check` says
//! about the socket units, and the state changes the daemon tells systemd.
//!
//! Under socket activation systemd binds the sockets itself and passes them
//! to the daemon as descriptors 3, 4, … (`LISTEN_FDS`, `LISTEN_PID`, and
//! their names in `LISTEN_FDNAMES`). Because systemd keeps its own copy, the
//! sockets stay open while the daemon restarts: new connections wait in the
//! socket's backlog, and the next process answers them. Nothing is refused.
//!
//! Which socket is which comes from its name (`FileDescriptorName=`):
//! `callback` and `admin`. A single socket with any other name (systemd names
//! it after its unit by default) is the callback listener.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The `FileDescriptorName=` of the callback socket.
pub const CALLBACK: &str = "callback";
/// The `FileDescriptorName=` of the admin socket.
pub const ADMIN: &str = "admin";

/// The socket units the package ships, and the listener each one serves.
pub const UNITS: [(&str, &str, &str); 2] = [
    ("easehook.socket", CALLBACK, "listen"),
    ("easehook-admin.socket", ADMIN, "admin_listen"),
];

/// Listening sockets passed by systemd; a listener without one is bound from
/// the configuration as usual.
#[derive(Debug, Default)]
pub struct Passed {
    pub callback: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

impl Passed {
    /// No sockets passed: both listeners are bound from the configuration.
    pub fn none() -> Self {
        Self::default()
    }

    /// The sockets systemd passed to this process, if any. The variables
    /// are removed afterwards, so that no child process takes them for its own.
    ///
    /// # Safety
    ///
    /// Changes the environment: call it before any other thread starts.
    pub unsafe fn from_systemd() -> anyhow::Result<Self> {
        // SAFETY: the caller promises that no other thread runs yet.
        let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
            .context("cannot read the sockets passed by systemd (LISTEN_FDS, LISTEN_FDNAMES)")?;
        let fds: Vec<(OwnedFd, String)> = fds
            // SAFETY: systemd passed these descriptors to this process, and
            // nothing else in it has taken them.
            .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd as RawFd) }, name))
            .collect();
        Self::assign(fds)
    }

    /// Give each passed socket its listener by its name.
    pub fn assign(fds: Vec<(OwnedFd, String)>) -> anyhow::Result<Self> {
        let mut passed = Passed::none();
        let single = fds.len() == 1;
        let names: Vec<String> = fds.iter().map(|(_, n)| n.clone()).collect();
        for (fd, name) in fds {
            let slot = match name.as_str() {
                CALLBACK => &mut passed.callback,
                ADMIN => &mut passed.admin,
                // systemd's default name is the socket unit's; one socket
                // alone can only be meant for callbacks.
                _ if single => &mut passed.callback,
                _ => bail!(
                    "systemd passed {} sockets named {}; name them {CALLBACK} and {ADMIN} \
                     (FileDescriptorName= in their socket units)",
                    names.len(),
                    names.join(", ")
                ),
            };
            if slot.is_some() {
                bail!(
                    "systemd passed two sockets named {name} ({}); each listener takes one",
                    names.join(", ")
                );
            }
            *slot = Some(listener(fd, &name)?);
        }
        Ok(passed)
    }
}

/// A passed descriptor as a TCP listener, once it is known to be one.
fn listener(fd: OwnedFd, name: &str) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::from(fd);
    let what = || format!("the socket named {name} passed by systemd");
    let listening = socket
        .is_listener()
        .with_context(|| format!("{}: not a socket", what()))?;
    let stream = socket.r#type().with_context(what)? == socket2::Type::STREAM;
    let inet = socket
        .local_addr()
        .with_context(what)?
        .as_socket()
        .is_some();
    if !(listening && stream && inet) {
        bail!(
            "{} is not a listening TCP socket (ListenStream= with an IP address and port)",
            what()
        );
    }
    socket.set_nonblocking(true).with_context(what)?;
    Ok(socket.into())
}

/// What `check` says when an installed socket unit listens elsewhere than
/// the configuration: under systemd the socket's address is the one served.
/// Socket units are looked up as systemd does (`$SYSTEMD_UNIT_PATH`, else
/// the system unit directories), with their drop-ins.
pub fn check_units(listen: SocketAddr, admin_listen: SocketAddr, config: &Path) -> Vec<String> {
    let dirs = unit_dirs(std::env::var("SYSTEMD_UNIT_PATH").ok().as_deref());
    let mut warnings = Vec::new();
    for (unit, _, key) in UNITS {
        let Some((path, streams)) = listen_streams(&dirs, unit) else {
            continue;
        };
        let configured = if key == "listen" {
            listen
        } else {
            admin_listen
        };
        for stream in streams {
            if !same_address(&stream, configured) {
                warnings.push(format!(
                    "{}: ListenStream={stream} differs from {key}: {configured} in {}; \
                     under systemd the socket's address is served (edit ListenStream= to move it)",
                    path.display(),
                    config.display()
                ));
            }
        }
    }
    warnings
}

/// The directories systemd reads system units from, in order. A
/// `SYSTEMD_UNIT_PATH` ending in `:` is followed by the usual ones.
fn unit_dirs(unit_path: Option<&str>) -> Vec<PathBuf> {
    const SYSTEM: [&str; 4] = [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ];
    let mut dirs: Vec<PathBuf> = Vec::new();
    let defaults = match unit_path {
        None => true,
        Some(p) => {
            dirs.extend(p.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
            p.ends_with(':')
        }
    };
    if defaults {
        dirs.extend(SYSTEM.iter().map(PathBuf::from));
    }
    dirs
}

/// The unit file that systemd would load for `unit` (the first found), and
/// its `ListenStream=` values after its drop-ins (`unit.d/*.conf`, in name
/// order; an empty `ListenStream=` clears the list, as in systemd).
fn listen_streams(dirs: &[PathBuf], unit: &str) -> Option<(PathBuf, Vec<String>)> {
    let path = dirs.iter().map(|d| d.join(unit)).find(|p| p.is_file())?;
    let mut streams = Vec::new();
    let mut read = |file: &Path| {
        let Ok(text) = std::fs::read_to_string(file) else {
            return;
        };
        let mut in_socket = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_socket = line == "[Socket]";
            } else if in_socket && let Some(value) = line.strip_prefix("ListenStream=") {
                match value.trim() {
                    "" => streams.clear(),
                    v => streams.push(v.to_string()),
                }
            }
        }
    };
    read(&path);
    let mut dropins: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d.join(format!("{unit}.d"))).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    dropins.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    for d in &dropins {
        read(d);
    }
    Some((path, streams))
}

/// Whether a `ListenStream=` value names `addr`. A bare port listens on
/// every address, as does `0.0.0.0` or `[::]` in the configuration.
fn same_address(stream: &str, addr: SocketAddr) -> bool {
    if let Ok(port) = stream.parse::<u16>() {
        return port == addr.port() && addr.ip().is_unspecified();
    }
    stream.parse::<SocketAddr>() == Ok(addr)
}

/// Tell systemd about a state change; a no-op outside systemd.
pub fn notify_systemd(states: &[sd_notify::NotifyState]) {
    let mut all: Vec<sd_notify::NotifyState> = states.to_vec();
    // systemd ≥ 253 requires a timestamp with RELOADING=1.
    if states
        .iter()
        .any(|s| matches!(s, sd_notify::NotifyState::Reloading))
        && let Ok(ts) = sd_notify::NotifyState::monotonic_usec_now()
    {
        all.push(ts);
    }
    if let Err(e) = sd_notify::notify(&all) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(addr: &str) -> OwnedFd {
        OwnedFd::from(std::net::TcpListener::bind(addr).unwrap())
    }

    #[test]
    fn sockets_are_assigned_by_name() {
        let cb = listening("127.0.0.1:0");
        let admin = listening("127.0.0.1:0");
        let p = Passed::assign(vec![(admin, "admin".into()), (cb, "callback".into())]).unwrap();
        assert!(p.callback.is_some() && p.admin.is_some());
    }

    #[test]
    fn a_single_socket_of_any_name_is_the_callback_listener() {
        for name in ["unknown", "easehook.socket", "callback"] {
            let p = Passed::assign(vec![(listening("127.0.0.1:0"), name.into())]).unwrap();
            assert!(p.callback.is_some() && p.admin.is_none(), "{name}");
        }
        let p = Passed::assign(vec![(listening("127.0.0.1:0"), "admin".into())]).unwrap();
        assert!(p.callback.is_none() && p.admin.is_some());
    }

    #[test]
    fn unnamed_or_twice_named_sockets_are_refused_with_their_names() {
        let err = Passed::assign(vec![
            (listening("127.0.0.1:0"), "a.socket".into()),
            (listening("127.0.0.1:0"), "a.socket".into()),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("2 sockets named a.socket, a.socket"), "{err}");
        assert!(err.contains("FileDescriptorName="), "{err}");
        let err = Passed::assign(vec![
            (listening("127.0.0.1:0"), "callback".into()),
            (listening("127.0.0.1:0"), "callback".into()),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("two sockets named callback"), "{err}");
    }

    #[test]
    fn a_socket_that_does_not_listen_is_refused() {
        let udp = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let err = Passed::assign(vec![(udp, "callback".into())]).unwrap_err();
        assert!(
            err.to_string().contains("not a listening TCP socket"),
            "{err}"
        );
    }

    #[test]
    fn addresses_compare_as_systemd_reads_them() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(same_address("8080", any));
        assert!(!same_address("8080", lo));
        assert!(same_address("127.0.0.1:8080", lo));
        assert!(!same_address("127.0.0.1:8081", lo));
        assert!(!same_address("/run/easehook.sock", lo));
    }

    #[test]
    fn drop_ins_replace_or_add_listen_streams() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("easehook.socket"),
            "[Unit]\nListenStream=ignored\n[Socket]\nListenStream=127.0.0.1:8080\n",
        )
        .unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let (_, s) = listen_streams(&dirs, "easehook.socket").unwrap();
        assert_eq!(s, ["127.0.0.1:8080"]);
        std::fs::create_dir(dir.path().join("easehook.socket.d")).unwrap();
        std::fs::write(
            dir.path().join("easehook.socket.d/10-addr.conf"),
            "[Socket]\nListenStream=\nListenStream=0.0.0.0:80\n",
        )
        .unwrap();
        let (_, s) = listen_streams(&dirs, "easehook.socket").unwrap();
        assert_eq!(s, ["0.0.0.0:80"]);
        assert!(listen_streams(&dirs, "easehook-admin.socket").is_none());
    }

    #[test]
    fn unit_path_is_read_as_systemd_does() {
        assert_eq!(
            unit_dirs(Some("/a:/b"))[..],
            [PathBuf::from("/a"), "/b".into()]
        );
        assert_eq!(unit_dirs(Some("/a:")).len(), 5);
        assert_eq!(unit_dirs(None)[0], PathBuf::from("/etc/systemd/system"));
    }
}
