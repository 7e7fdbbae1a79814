//! The default agents and process (the `base/` folder), embedded at compile time.
