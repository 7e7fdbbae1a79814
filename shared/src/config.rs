//! `.hyperloop.yaml`: parsing, environment overrides, defaults and validation.
