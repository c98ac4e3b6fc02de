// Command episoded records time-aligned camera, lidar and robot-telemetry
// episodes on a factory gateway and uploads them to the central pipeline.
// Run `episoded --help` for the subcommands.
package main

import "os"

func main() { os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr)) }
