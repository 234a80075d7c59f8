//! What SIGHUP changes in a running daemon: it re-reads the config file it started
//! with and applies what can change without a restart, the log filter (`log`) and an
//! exit's policy (`exit.policy`, also republished in its descriptor). Other changes
//! are named in a warning and wait for the next restart; a file that does not load
//! changes nothing. The daemon's loop ([`crate::runtime::daemon`]) does the applying.

use std::path::PathBuf;

use crate::config::{self, ClientConfig, ConfigError, GatewayConfig};

/// The config a daemon runs with, and its file.
pub(crate) struct Reload {
    pub(crate) path: PathBuf,
    running: Running,
}

enum Running {
    Gateway(Box<GatewayConfig>),
    Client(Box<ClientConfig>),
}

/// What a re-read file changes.
#[derive(Debug, PartialEq)]
pub(crate) struct Changes {
    /// The file's `log` (`None`: the default).
    pub(crate) log: Option<String>,
    /// The new exit policy's rules, when they changed (exits only).
    pub(crate) policy: Option<Vec<String>>,
    /// The sections with other changes, which wait for a restart.
    pub(crate) restart: Vec<&'static str>,
}

impl Reload {
    pub(crate) fn gateway(path: PathBuf, cfg: GatewayConfig) -> Self {
        Self {
            path,
            running: Running::Gateway(Box::new(cfg)),
        }
    }

    pub(crate) fn client(path: PathBuf, cfg: ClientConfig) -> Self {
        Self {
            path,
            running: Running::Client(Box::new(cfg)),
        }
    }

    /// Re-reads the file: what it changes for a daemon that is an exit (`exit`) or
    /// not, and the new values to [`Reload::commit`] once they are applied.
    pub(crate) fn reread(&self, exit: bool) -> Result<(Changes, Applied), ConfigError> {
        match &self.running {
            Running::Gateway(old) => {
                let new = config::load_gateway(&self.path)?;
                let changes = gateway_changes(old, &new, exit);
                Ok((changes, Applied::Gateway(new.log, new.exit.policy)))
            }
            Running::Client(old) => {
                let new = config::load_client(&self.path)?;
                Ok((client_changes(old, &new), Applied::Client(new.log)))
            }
        }
    }

    /// Records what was applied as running, for the next [`Reload::reread`].
    pub(crate) fn commit(&mut self, applied: Applied) {
        match (&mut self.running, applied) {
            (Running::Gateway(c), Applied::Gateway(log, policy)) => {
                c.log = log;
                c.exit.policy = policy;
            }
            (Running::Client(c), Applied::Client(log)) => c.log = log,
            _ => {}
        }
    }
}

/// The values a re-read file brought that can change while running.
pub(crate) enum Applied {
    Gateway(Option<String>, Vec<String>),
    Client(Option<String>),
}

/// What `new` changes in a gateway running `old`.
fn gateway_changes(old: &GatewayConfig, new: &GatewayConfig, exit: bool) -> Changes {
    let mut restart = Vec::new();
    let same_gateway = GatewayConfig {
        log: old.log.clone(),
        exit: old.exit.clone(),
        discovery: old.discovery.clone(),
        ..new.clone()
    };
    if same_gateway != *old {
        restart.push("[gateway]");
    }
    let mut same_exit = new.exit.clone();
    same_exit.policy.clone_from(&old.exit.policy);
    if exit && same_exit != old.exit {
        restart.push("[exit]");
    }
    if new.discovery != old.discovery {
        restart.push("[discovery]");
    }
    Changes {
        log: new.log.clone(),
        policy: (exit && new.exit.policy != old.exit.policy).then(|| new.exit.policy.clone()),
        restart,
    }
}

/// What `new` changes in a client running `old`.
fn client_changes(old: &ClientConfig, new: &ClientConfig) -> Changes {
    let mut restart = Vec::new();
    let same_client = ClientConfig {
        log: old.log.clone(),
        tunnel: old.tunnel.clone(),
        discovery: old.discovery.clone(),
        relay: old.relay.clone(),
        ..new.clone()
    };
    if same_client != *old {
        restart.push("[client]");
    }
    if new.tunnel != old.tunnel {
        restart.push("[tunnel]");
    }
    if new.discovery != old.discovery {
        restart.push("[discovery]");
    }
    if new.relay != old.relay {
        restart.push("[gateway]");
    }
    Changes {
        log: new.log.clone(),
        policy: None,
        restart,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const GW: &str = "[gateway]\nidentity = \"/x/id.key\"\n";

    fn gw(text: &str) -> GatewayConfig {
        config::parse_gateway(text).unwrap()
    }

    fn cl(text: &str) -> ClientConfig {
        config::parse_client(&format!(
            "{text}\n[discovery]\nbootstrap = [\"198.18.0.1:9000 {}\"]\n",
            crate::proto::identity::PublicKey([7; 32])
        ))
        .unwrap()
    }

    #[test]
    fn gateway_log_and_policy_apply_the_rest_waits() {
        let old = gw(GW);
        let new = gw(&format!(
            "log = \"debug\"\n{GW}[exit]\npolicy = [\"reject *:80\"]\n"
        ));
        assert_eq!(
            gateway_changes(&old, &new, true),
            Changes {
                log: Some("debug".into()),
                policy: Some(vec!["reject *:80".into()]),
                restart: vec![]
            }
        );
        let relay = gateway_changes(&old, &new, false);
        assert_eq!(
            (relay.policy, relay.restart),
            (None, vec![]),
            "a relay has no policy"
        );

        let new = gw(&format!(
            "{GW}handshake_rate = 5\n[exit]\nmtu = 1400\npolicy = [\"reject *:80\"]\n[discovery]\nshare = false\n"
        ));
        let c = gateway_changes(&old, &new, true);
        assert_eq!(c.log, None);
        assert_eq!(c.policy, Some(vec!["reject *:80".into()]));
        assert_eq!(c.restart, ["[gateway]", "[exit]", "[discovery]"]);
        assert_eq!(
            gateway_changes(&old, &new, false).restart,
            ["[gateway]", "[discovery]"]
        );
        assert_eq!(
            gateway_changes(&old, &old, true),
            Changes {
                log: None,
                policy: None,
                restart: vec![]
            }
        );
    }

    #[test]
    fn client_log_applies_the_rest_waits() {
        let old = cl("");
        let c = client_changes(&old, &cl("log = \"trace\""));
        assert_eq!((c.log.as_deref(), c.restart.len()), (Some("trace"), 0));
        let c = client_changes(&old, &cl("[client]\ncircuits = 5\n[tunnel]\nmtu = 1300"));
        assert_eq!(c.restart, ["[client]", "[tunnel]"]);
    }

    #[test]
    fn a_reread_file_becomes_the_running_one_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, GW).unwrap();
        let mut r = Reload::gateway(path.clone(), gw(GW));
        std::fs::write(
            &path,
            format!("log = \"warn\"\n{GW}[exit]\npolicy = [\"reject *:80\"]\n"),
        )
        .unwrap();
        let (c, _) = r.reread(true).unwrap();
        assert_eq!(c.log.as_deref(), Some("warn"));
        assert!(c.policy.is_some());
        // Not committed (applying failed): the policy is still new.
        let (c, applied) = r.reread(true).unwrap();
        assert!(c.policy.is_some());
        r.commit(applied);
        let (c, _) = r.reread(true).unwrap();
        assert_eq!(
            (c.log.as_deref(), c.policy, c.restart.len()),
            (Some("warn"), None, 0)
        );
        std::fs::write(&path, "[gateway]\nidentity = 5\n").unwrap();
        let e = r.reread(true).err().unwrap().to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
    }
}
