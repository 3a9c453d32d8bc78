//go:build !race

package main

// raceDetector tells tests whether the race detector is on.
const raceDetector = false
