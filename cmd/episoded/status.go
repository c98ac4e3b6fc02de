package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("status", "status [flags]", stdout, stderr)
	cf := addClientFlags(fs)
	out := addOutputFlag(fs, "text")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !checkOutput(*out, stderr, "text", "json") {
		return exitUsage
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitUsage
	}
	var raw json.RawMessage
	if err := c.json("GET", "/v1/status", nil, &raw); err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitFailure
	}
	if *out == "json" {
		stdout.Write(append(raw, '\n'))
		return exitOK
	}
	var st struct {
		Version string `json:"version"`
		Gateway string `json:"gateway"`
		Ready   bool   `json:"ready"`
		Uptime  int64  `json:"uptime_seconds"`
		Storage struct {
			Bytes, Quota, Free int64
			Full               bool
			Alarms             []string
		} `json:"storage"`
		Devices []struct {
			Device, Protocol, State string
			LastError               string `json:"last_error"`
			Reconnects              uint64
		} `json:"devices"`
		Streams []struct {
			Stream   string `json:"stream"`
			Counters struct {
				Samples         uint64 `json:"samples"`
				Bytes           uint64 `json:"bytes"`
				Discontinuities uint64 `json:"discontinuities"`
				Dropped         uint64 `json:"dropped"`
				Lost            uint64 `json:"lost"`
				DecodeErrors    uint64 `json:"decode_errors"`
			} `json:"counters"`
			Clock struct {
				Mode         string `json:"mode"`
				ErrorBoundNs int64  `json:"error_bound_ns"`
				SourceReason string `json:"clock_source_reason"`
			} `json:"clock"`
		} `json:"streams"`
		Cells []struct {
			Cell      string `json:"cell"`
			Recording *struct {
				ID   string `json:"id"`
				Task string `json:"task"`
			} `json:"recording"`
		} `json:"cells"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		fmt.Fprintf(stderr, "episoded: bad status answer: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "episoded %s on gateway %s: ready=%v, up %ds\n", st.Version, st.Gateway, st.Ready, st.Uptime)
	fmt.Fprintf(stdout, "storage: %s used, %s free, quota %s, full=%v\n", fmtBytes(st.Storage.Bytes), fmtBytes(st.Storage.Free), fmtBytes(st.Storage.Quota), st.Storage.Full)
	for _, a := range st.Storage.Alarms {
		fmt.Fprintf(stdout, "ALARM: %s\n", a)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nDEVICE\tPROTOCOL\tSTATE\tRECONNECTS\tLAST ERROR")
	for _, d := range st.Devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", d.Device, d.Protocol, d.State, d.Reconnects, d.LastError)
	}
	fmt.Fprintln(tw, "\nSTREAM\tSAMPLES\tBYTES\tGAPS\tLOST\tDROPPED\tDECODE ERR\tCLOCK\tBOUND")
	var untrusted []string
	for _, s := range st.Streams {
		c := s.Counters
		mode := s.Clock.Mode
		if r := s.Clock.SourceReason; r != "" && r != "configured" && r != "no device time yet" {
			// A device clock put on arrival time: say why below the table.
			mode += "*"
			untrusted = append(untrusted, fmt.Sprintf("* %s: %s", s.Stream, r))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%.2f ms\n", s.Stream, c.Samples, fmtBytes(int64(c.Bytes)), c.Discontinuities, c.Lost, c.Dropped, c.DecodeErrors, mode, float64(s.Clock.ErrorBoundNs)/1e6)
	}
	for _, u := range untrusted {
		fmt.Fprintln(tw, u)
	}
	fmt.Fprintln(tw, "\nCELL\tRECORDING")
	for _, c := range st.Cells {
		rec := "-"
		if c.Recording != nil {
			rec = c.Recording.ID + " " + c.Recording.Task
		}
		fmt.Fprintf(tw, "%s\t%s\n", c.Cell, rec)
	}
	tw.Flush()
	return exitOK
}
