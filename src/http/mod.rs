//! HTTP support: request replay and response peeking. (Work in progress.)
