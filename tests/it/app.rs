//! The service in this test process: [`TestApp::spawn`] builds the application on ports chosen
//! by the system and serves it from a thread of its own, as `serve` would. Tests of signals, of
//! the command line and of several replicas run the real binary instead
//! ([`crate::process::ServeProcess`]).

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokenmanager::app::{AppHandle, Application, ConfigSources, Ports};

/// A running application; stopped and joined when dropped.
pub struct TestApp {
    pub https: u16,
    pub dips: u16,
    pub metrics: u16,
    handle: AppHandle,
    /// The actix system the application runs on, and the thread that runs it.
    system: actix_rt::System,
    thread: Option<JoinHandle<()>>,
}

impl TestApp {
    /// Builds and starts the application of the configuration file `config`.
    pub fn spawn(config: &Path) -> Self {
        let files = vec![config.to_path_buf()];
        let (started, ready) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let built = system.block_on(async move {
                let (settings, sources) = ConfigSources::load(&files).await?;
                Application::build(settings, sources, prometheus::Registry::new()).await
            });
            let app = match built {
                Ok(app) => app,
                Err(error) => {
                    let _ = started.send(Err(error.to_string()));
                    return;
                }
            };
            let _ = started.send(Ok((app.ports(), app.handle(), actix_rt::System::current())));
            if let Err(error) = system.block_on(app.run()) {
                eprintln!("the test application stopped with an error: {error}");
            }
        });
        let (
            Ports {
                https,
                dips,
                metrics,
            },
            handle,
            system,
        ) = match ready.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => panic!("the application did not start: {error}"),
            Err(_) => panic!("the application's thread ended before it started"),
        };
        Self {
            https,
            dips,
            metrics,
            handle,
            system,
            thread: Some(thread),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stopped from within its own system, which then has nothing left to run.
        self.system.arbiter().spawn(async move {
            handle.stop(false).await;
        });
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
