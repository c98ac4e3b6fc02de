package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/catalog"
	"github.com/episoded/episoded/sync/verify"
)

// Exit codes of verify beyond exitOK and exitUsage.
const (
	exitVerifyFailed = 1 // at least one episode has a problem
	exitUnreadable   = 3 // the store could not be read at all
)

// storeFlags locate the central store: a location argument (s3://bucket/
// prefix or a directory), or the sync target of a daemon config.
type storeFlags struct {
	endpoint, region, config *string
	pathStyle                *bool
}

func addStoreFlags(fs *flag.FlagSet) storeFlags {
	return storeFlags{
		endpoint:  fs.String("endpoint", "", "S3 endpoint for s3:// locations (default $AWS_ENDPOINT_URL, or the config's sync.target); credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY"),
		region:    fs.String("region", "", "S3 region"),
		config:    fs.String("config", "", "take the endpoint, credentials and (without a location) the target from this daemon config's sync.target"),
		pathStyle: fs.Bool("path-style", false, "force path-style bucket addressing"),
	}
}

// open returns the bucket and key prefix of loc ("" means the config's
// target, prefix included).
func (f storeFlags) open(loc string) (bucket.Bucket, string, error) {
	o := bucket.S3Options{Endpoint: *f.endpoint, Region: *f.region, PathStyle: *f.pathStyle}
	if *f.config != "" {
		cfg, err := config.LoadSecrets(*f.config, config.SecretSync)
		if err != nil {
			return nil, "", err
		}
		t := cfg.Sync.Target
		if o.Endpoint == "" {
			o.Endpoint = t.Endpoint
		}
		if o.Region == "" {
			o.Region = t.Region
		}
		o.PathStyle = o.PathStyle || t.PathStyle
		o.AccessKey, o.SecretKey = t.AccessKey.Value(), t.SecretKey.Value()
		if loc == "" {
			switch t.Type {
			case "s3":
				loc = "s3://" + t.Bucket + "/" + t.Prefix
			case "dir":
				loc = filepath.Join(t.Path, filepath.FromSlash(t.Prefix))
			default:
				return nil, "", fmt.Errorf("%s has no sync target", *f.config)
			}
		}
	}
	if loc == "" {
		return nil, "", errors.New("no location: give s3://bucket/prefix, a directory, or --config")
	}
	return bucket.Open(loc, o)
}

func cmdCatalog(args []string, stdout, stderr io.Writer) int {
	const synopsis = "catalog compact [--target s3://bucket/prefix|DIR | --config FILE] --before YYYY-MM-DD [flags]"
	if len(args) == 0 || args[0] != "compact" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintf(stdout, "Usage: episoded %s\n\n  compact  merge closed days' catalog row files into a few larger files\n", synopsis)
			return exitOK
		}
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	fs := newFlags("catalog compact", synopsis, stdout, stderr)
	sf := addStoreFlags(fs)
	target := fs.String("target", "", "the central store: s3://bucket/prefix or a directory (a dir target's path joined with its prefix)")
	before := fs.String("before", "", "compact days before this date (YYYY-MM-DD, UTC); required")
	grace := fs.Duration("grace", 48*time.Hour, "never touch days that end less than this long ago (gateways may still write them)")
	maxRows := fs.Int("max-rows", 500_000, "rows per compacted file")
	conc := fs.Int("concurrency", 16, "objects read or deleted at once")
	format := addOutputFlag(fs, "text")
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	if !checkOutput(*format, stderr, "text", "json") {
		return exitUsage
	}
	if *before == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	day, err := time.Parse(time.DateOnly, *before)
	if err != nil {
		fmt.Fprintf(stderr, "episoded catalog compact: --before %q: want YYYY-MM-DD\n", *before)
		return exitUsage
	}
	b, prefix, err := sf.open(*target)
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	res, err := catalog.Compact(ctx, b, catalog.CompactOptions{Prefix: prefix, Before: day, Grace: *grace, MaxRows: *maxRows, Concurrency: *conc})
	if *format == "json" {
		printJSON(stdout, res)
		if err != nil {
			fmt.Fprintf(stderr, "episoded: %s\n", oneLine(err))
			return exitFailure
		}
		return exitOK
	}
	if !res.Cutoff.IsZero() && res.Cutoff.Before(day) {
		fmt.Fprintf(stdout, "grace period %s: only days before %s are compacted\n", *grace, res.Cutoff.Format(time.DateOnly))
	}
	rows, files := 0, 0
	for _, p := range res.Partitions {
		if p.Skipped != "" {
			fmt.Fprintf(stdout, "%s: left alone (%s)\n", p.Dir, p.Skipped)
			continue
		}
		fmt.Fprintf(stdout, "%s: %d files -> %d (%d rows, %d duplicates dropped)\n", p.Dir, p.Inputs, len(p.Outputs), p.Rows, p.Dupes)
		rows += p.Rows
		files += p.Inputs
	}
	fmt.Fprintf(stdout, "compacted %d partition(s): %d files, %d rows\n", len(res.Partitions), files, rows)
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %s\n", oneLine(err))
		return exitFailure
	}
	return exitOK
}

func cmdVerify(args []string, stdout, stderr io.Writer) int {
	const synopsis = "verify PATH|s3://bucket/prefix/... [--trusted-keys FILE] [flags]"
	fs := newFlags("verify", synopsis, stdout, stderr)
	sf := addStoreFlags(fs)
	trustedFile := fs.String("trusted-keys", "", "file of trusted gateway keys, one `episoded key show` line each; without it the signer is not pinned")
	out := addOutputFlag(fs, "text")
	if code, ok := parse(fs, interspersed(fs, args)); !ok {
		return code
	}
	if fs.NArg() > 1 || (fs.NArg() == 0 && *sf.config == "") {
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	loc, key := fs.Arg(0), ""
	if !strings.HasPrefix(loc, "s3://") && loc != "" {
		// A local manifest.json or episode directory: its directory is the
		// root.
		if st, err := os.Stat(loc); err == nil && !st.IsDir() {
			loc, key = filepath.Dir(loc), filepath.Base(loc)
		}
	}
	var o verify.Options
	if *trustedFile != "" {
		t, err := signing.ReadTrusted(*trustedFile)
		if err != nil {
			fmt.Fprintf(stderr, "episoded: %v\n", err)
			return exitUsage
		}
		o.Trusted = t
	}
	b, prefix, err := sf.open(loc)
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitUnreadable
	}
	if key != "" {
		prefix = bucket.Join(prefix, key)
	}
	if *out == "text" {
		o.Progress = func(ep verify.Episode) { printVerified(stdout, ep, o.Trusted != nil) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rep, err := verify.Run(ctx, b, prefix, o)
	if err != nil {
		fmt.Fprintf(stderr, "episoded verify: %s\n", oneLine(err))
		return exitUnreadable
	}
	if *out == "json" {
		printJSON(stdout, rep)
	} else {
		fmt.Fprintf(stdout, "verified %d episode(s): %d ok, %d failed\n", len(rep.Episodes), rep.OK, rep.Failed)
		if !rep.Pinned {
			fmt.Fprintln(stdout, "signer not pinned: signatures were checked against the key each manifest names (use --trusted-keys)")
		}
	}
	for _, ep := range rep.Episodes {
		for _, p := range ep.Problems {
			fmt.Fprintf(stderr, "episoded verify: %s: %s\n", ep.Manifest, p)
		}
	}
	if rep.Failed > 0 {
		return exitVerifyFailed
	}
	return exitOK
}

func printVerified(w io.Writer, ep verify.Episode, pinned bool) {
	signer := "unsigned"
	if ep.KeyID != "" {
		signer = "signed by " + ep.KeyID
		switch {
		case ep.Pinned:
			signer += " (trusted)"
		case !pinned:
			signer += " (not pinned)"
		}
	}
	status := "OK  "
	if !ep.OK() {
		status = "FAIL"
	}
	fmt.Fprintf(w, "%s %s  episode %s, gateway %s, %d objects, %s\n", status, ep.Manifest, ep.Episode, ep.Gateway, ep.Objects, signer)
	for _, p := range ep.Problems {
		fmt.Fprintf(w, "     %s\n", p)
	}
}

func cmdKey(args []string, stdout, stderr io.Writer) int {
	const synopsis = "key show [--config FILE] [-o text|json]"
	if len(args) == 0 || args[0] != "show" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintf(stdout, "Usage: episoded %s\n\n  show  print the gateway's manifest signing key: its id and public key\n", synopsis)
			return exitOK
		}
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	fs := newFlags("key show", synopsis, stdout, stderr)
	path := fs.String("config", "/etc/episoded/episoded.yaml", "config file (the key is in storage.dir, or $CREDENTIALS_DIRECTORY)")
	out := addOutputFlag(fs, "text")
	asJSON := fs.Bool("json", false, "same as -o json (kept for old scripts)")
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	if !checkOutput(*out, stderr, "text", "json") {
		return exitUsage
	}
	*asJSON = *asJSON || *out == "json"
	cfg, err := config.LoadSecrets(*path, config.SecretsNone)
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %s\n", oneLine(err))
		return exitUsage
	}
	// key show never generates the key: the daemon does on its first
	// start, once the store directory is initialised.
	k, err := signing.Find(cfg.Storage.Dir, os.Getenv("CREDENTIALS_DIRECTORY"))
	if errors.Is(err, signing.ErrNoKey) {
		fmt.Fprintf(stderr, "episoded: %v: it is generated when the daemon first starts, or provide one with LoadCredential=%s:FILE\n", err, signing.FileName)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitFailure
	}
	if *asJSON {
		printJSON(stdout, map[string]string{"key_id": k.ID, "public_key": k.PublicString(), "algorithm": signing.Alg, "path": k.Path, "gateway": cfg.Gateway.ID})
		return exitOK
	}
	fmt.Fprintf(stdout, "%s %s\n", k.ShowLine(), cfg.Gateway.ID)
	return exitOK
}
