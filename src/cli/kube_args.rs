//! The flags kubectl users expect on every command that talks to a cluster (`--kubeconfig`,
//! `--context`, `-n`), read the way kubectl reads them: `$KUBECONFIG` (a list of files) or
//! `~/.kube/config`, the current context, and that context's namespace.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Cluster connection flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// A connection: the client config, a client, and the namespace to work in.
pub struct Connection {
    /// Cluster address and credentials.
    pub config: Config,
    /// The client.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
}

impl KubeArgs {
    /// [`KubeArgs::connect`] for a command: on failure prints the error and gives the exit code
    /// for bad flags or configuration.
    pub async fn connect_or_exit(&self) -> Result<Connection, u8> {
        self.connect().await.map_err(|e| {
            eprintln!("error: {e}");
            super::exit::INVALID
        })
    }

    /// Connects as kubectl would with these flags. The error says what to check.
    pub async fn connect(&self) -> Result<Connection, String> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let hint = "set --kubeconfig or KUBECONFIG, or --context";
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("cannot load the kubeconfig ({e}); {hint}"))?,
            None => Config::infer()
                .await
                .map_err(|e| format!("cannot find a cluster ({e}); {hint}"))?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config.clone()).map_err(|e| format!("cannot create a Kubernetes client: {e}"))?;
        Ok(Connection {
            config,
            client,
            namespace,
        })
    }
}
