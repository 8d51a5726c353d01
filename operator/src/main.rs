//! `streamops-operator`: the controllers (`run`), the CRD YAML (`crd`) and an
//! API reachability probe (`check-api`, used by the cluster smoke test).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, api::ListParams};
use streamops_operator::{OperatorConfig, telemetry};

#[derive(Parser)]
#[command(
    name = "streamops-operator",
    version,
    about = "Kubernetes operator for Kafka topics and stream jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers until SIGINT/SIGTERM (or until leadership is lost).
    Run(Box<OperatorConfig>),
    /// Print the CustomResourceDefinitions as YAML (what `kubectl apply -f -` takes).
    Crd,
    /// List namespaces with the in-cluster config (or kubeconfig) and print
    /// their count; exits non-zero with the reason when the API is unreachable
    /// or access is denied.
    CheckApi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print_crds(),
        Command::CheckApi => block_on(check_api()),
        Command::Run(config) => {
            telemetry::init(config.log_format);
            block_on(async move {
                streamops_operator::run(*config)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })
        }
    }
}

fn block_on(fut: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() -> ExitCode {
    let mut out = String::new();
    for crd in streamops_crds::schema::crds() {
        match streamops_crds::schema::to_yaml(&crd) {
            Ok(yaml) => {
                out.push_str("---\n");
                out.push_str(&yaml);
            }
            Err(e) => {
                eprintln!("error: cannot render CRD as YAML: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

async fn check_api() -> Result<(), String> {
    let client = Client::try_default().await.map_err(|e| {
        format!("no Kubernetes client configuration (in-cluster service account or KUBECONFIG): {e}")
    })?;
    let namespaces: Api<Namespace> = Api::all(client);
    let list = namespaces
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| format!("listing namespaces failed: {e}"))?;
    println!("{}", list.items.len());
    Ok(())
}
