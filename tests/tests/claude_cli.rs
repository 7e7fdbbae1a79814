use hyperloop_tests::model_server::*;
use std::process::Command;

#[test]
fn probe() {
    let bin = claude_bin().unwrap();
    let server = ModelServer::start().unwrap();
    for (i, turn) in [Turn::http_500(), Turn::overloaded(), Turn::overloaded_in_stream(), Turn::fault(Fault::Http{status: 400, error_type: "invalid_request_error".into(), message: "bad".into()})].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        Command::new("git").args(["init", "-q", "-b", "main"]).current_dir(&repo).status().unwrap();
        let agent = format!("agent-{i}");
        server.set_script(&agent, Script::new().bash("echo hi").turn(turn));
        let s = ClaudeSession::new(bin.clone(), &repo, server.base_url(&agent), tmp.path().join("state"), "PROMPT-MARKER do the thing");
        let run = s.run().unwrap();
        println!("=== {i}: code {:?} elapsed {:?}\nRESULT {}\nstderr {}", run.code(), run.elapsed, run.result().map(|r| r.to_string()).unwrap_or_default(), run.stderr);
        for e in &run.events { if e["type"] == "system" && e["subtype"] != "init" { println!("EV {e}"); } }
    }
    println!("{}", server.dump());
    for r in server.requests() { let b = r.body.clone().unwrap(); println!("{} turn {:?} stream {} model {} max_tokens {} tools {} thinking {} keys {:?} beta {:?}", r.agent, r.turn, b["stream"], b["model"], b["max_tokens"], b["tools"].as_array().map(|t| t.len()).unwrap_or(0), b["thinking"], b.as_object().unwrap().keys().collect::<Vec<_>>(), r.headers.iter().find(|h| h.0=="anthropic-beta").map(|h| h.1.len())); }
}
