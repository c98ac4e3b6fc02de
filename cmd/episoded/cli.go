package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/episoded/episoded/internal/buildinfo"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/redact"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the daemon failed to start or failed while running
	exitUsage   = 2 // bad command line or invalid config
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "run the daemon", cmdRun},
		{"config", "check a config file (config check FILE [--print])", cmdConfig},
		{"status", "show a running daemon's devices, streams, cells and storage", cmdStatus},
		{"episodes", "list, show, export or delete episodes (episodes list|show|export|delete)", cmdEpisodes},
		{"replay", "replay an episode to MQTT and RTSP in real time (replay ID)", cmdReplay},
		{"sync", "upload what is due now, or show the upload queue (sync run|status)", cmdSync},
		{"dataset", "build a LeRobot v3.0 training dataset from episodes (dataset build)", cmdDataset},
		{"catalog", "compact the fleet catalog's closed days (catalog compact --target ... --before DATE)", cmdCatalog},
		{"verify", "check uploaded episodes' objects and signed manifests (verify PATH|s3://bucket/prefix)", cmdVerify},
		{"key", "print the gateway's manifest signing key (key show)", cmdKey},
		{"demo", "run a simulated cell and record it, in one process (needs nothing else)", cmdDemo},
		{"simulate", "run a simulated factory cell (RTSP cameras, MQTT robot, lidar, triggers)", cmdSimulate},
		{"version", "print the version, commit and Go version", cmdVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "episoded records time-aligned camera, lidar and robot-telemetry episodes.\n\nUsage:\n  episoded <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'episoded <command> --help' for a command's flags.\n")
}

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	case "--version":
		return cmdVersion(nil, stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "episoded: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

// newFlags returns a flag set whose --help prints usage to stdout and
// whose errors go to stderr.
func newFlags(name, synopsis string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage: episoded %s\n", synopsis)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	return fs
}

// parse parses flags; ok is false when the command should return code.
func parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "version [-o text|json]", stdout, stderr)
	out := addOutputFlag(fs, "text")
	asJSON := fs.Bool("json", false, "same as -o json (kept for old scripts)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !checkOutput(*out, stderr, "text", "json") {
		return exitUsage
	}
	bi := buildinfo.Get()
	if *asJSON || *out == "json" {
		b, _ := json.Marshal(bi)
		fmt.Fprintln(stdout, string(b))
		return exitOK
	}
	fmt.Fprintf(stdout, "episoded %s (commit %s, %s)\n", bi.Version, bi.Commit, bi.GoVersion)
	return exitOK
}

const configSynopsis = "config check FILE [--print] [--no-secrets] [-o text|json]"

func cmdConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stdout, "Usage: episoded "+configSynopsis)
			return exitOK
		}
		fmt.Fprintln(stderr, "Usage: episoded "+configSynopsis)
		return exitUsage
	}
	fs := newFlags("config check", configSynopsis, stdout, stderr)
	print := fs.Bool("print", false, "print the effective config, defaults filled in and secrets redacted")
	noSecrets := fs.Bool("no-secrets", false, "check structure and values only; do not read secret files (*_file keys), e.g. on a build machine")
	out := addOutputFlag(fs, "text")
	if code, ok := parse(fs, interspersed(fs, args[1:])); !ok {
		return code
	}
	if !checkOutput(*out, stderr, "text", "json") {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "episoded config check: need exactly one FILE")
		return exitUsage
	}
	want := config.SecretsAll
	if *noSecrets {
		want = config.SecretsNone
	}
	cfg, err := config.LoadSecrets(fs.Arg(0), want)
	if err != nil {
		// Load scrubs its secrets; URL credentials are masked again here
		// in case an error quotes a value it could not parse.
		fmt.Fprintf(stderr, "episoded: %v\n", redact.NewScrubber().Text(err.Error()))
		return exitUsage
	}
	if *print {
		out, err := cfg.Print()
		if err != nil {
			fmt.Fprintf(stderr, "episoded: %v\n", err)
			return exitFailure
		}
		stdout.Write(out)
		return exitOK
	}
	if *out == "json" {
		printJSON(stdout, map[string]any{"file": fs.Arg(0), "ok": true, "devices": len(cfg.Devices), "cells": len(cfg.Cells), "brokers": len(cfg.Brokers), "secrets_read": !*noSecrets})
		return exitOK
	}
	note := ""
	if *noSecrets {
		note = "; secret files not read"
	}
	fmt.Fprintf(stdout, "%s: ok (%d devices, %d cells, %d brokers%s)\n", fs.Arg(0), len(cfg.Devices), len(cfg.Cells), len(cfg.Brokers), note)
	return exitOK
}

// interspersed moves flags after positional arguments to the front, so
// that `config check FILE --print` works as well as `--print FILE`.
func interspersed(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if f := fs.Lookup(name); f != nil && !strings.Contains(name, "=") {
				if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !(ok && bf.IsBoolFlag()) && i+1 < len(args) {
					i++
					flags = append(flags, args[i])
				}
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", "run --config FILE", stdout, stderr)
	path := fs.String("config", "/etc/episoded/episoded.yaml", "config file")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	// Before anything else is done: it would be done again. Returns only
	// when not re-executing (see tcacheTunable).
	execErr := execWithTunables()
	tcacheOff := restoreTunables()
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %s\n", oneLine(err))
		return exitUsage
	}
	scrub := redact.NewScrubber(cfg.Secrets()...)
	log := newLogger(cfg.Log, scrub, stderr)
	setMemoryLimit(log)
	logMalloc(log, tcacheOff, execErr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go trimMallocEvery(ctx, mallocTrimInterval)
	d := daemon.New(cfg, log, nil)
	// SIGHUP reloads the API's TLS certificate (rotation without restart).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				d.Reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := d.Run(ctx); err != nil {
		log.Error("episoded failed", "err", err)
		fmt.Fprintf(stderr, "episoded: %s\n", scrub.Text(oneLine(err)))
		return exitFailure
	}
	return exitOK
}

// oneLine folds a multi-line error into one line for stderr and journald.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// newLogger builds the daemon's logger; every line goes through scrub, so
// no credential from the config reaches it, even quoted by a library.
func newLogger(c config.Log, scrub *redact.Scrubber, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: scrub.ReplaceAttr}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
