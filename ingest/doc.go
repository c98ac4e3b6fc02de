// Package ingest is the pure core of episoded: clock alignment per stream,
// the episode state machine per cell, quality accounting per episode and
// stream, and the synchronized view used by exports.
//
// It does no I/O, starts no goroutines and never reads the wall clock: every
// time is an argument, in int64 nanoseconds since the Unix epoch on the
// gateway clock. Nothing in it is safe for concurrent use; the daemon
// serialises calls per stream (Stream, Clock, Report) and per cell (Cell).
package ingest
