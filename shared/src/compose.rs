//! kustomize-semantics composition of `kind: Agent` and `kind: Process` resources.
