//! todo
pub struct GitLander;
