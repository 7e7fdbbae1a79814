//! Assembly of the prompt an agent receives at spawn time.
