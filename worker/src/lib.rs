//! kennel: the library a game server links.
