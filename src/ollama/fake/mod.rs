//! The embedded fake Ollama server. (Work in progress.)
