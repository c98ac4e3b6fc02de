// Package e2e runs the whole pipeline end to end against the simulator's
// ground truth: simulated cameras and MQTT devices with skewed clocks,
// delay jitter, packet loss and a camera outage, recorded by a real daemon
// into a real store, cut into episodes by MQTT triggers, exported to MCAP
// and uploaded to a dir target. Nothing is faked.
//
// TestOutagesRealCamera and TestOutagesRealTelemetry check the loss
// accounting the same way: a real RTSP camera (the simulator's gortsplib
// server) that goes away, and a mosquitto_pub publisher on a real mosquitto
// broker that falls silent without disconnecting, at the start, in the
// middle, at the end and for the whole of episodes started and stopped
// through the HTTP API. TestCloseWhileRecordingRealCameras records 8 real
// RTSP cameras and checks that no frame is dropped while an episode closes
// and the next one records.
//
// It runs without the race detector (the Makefile's test target says so):
// at 2 cameras, 260 MQTT messages/s and 1 MB/s of lidar, the race
// detector's slowdown on two cores would itself cause the losses the test
// must count exactly. Every package it drives has its own race-tested tests.
package e2e
