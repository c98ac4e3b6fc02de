package provenance

import (
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
)

func TestFromTimex(t *testing.T) {
	for _, c := range []struct {
		name   string
		state  int
		tx     unix.Timex
		synced bool
		off    int64
	}{
		{"synced, microseconds", unix.TIME_OK, unix.Timex{Status: unix.STA_PLL, Offset: -12, Esterror: 40, Maxerror: 900}, true, -12000},
		{"synced, nanoseconds", unix.TIME_OK, unix.Timex{Status: unix.STA_PLL | unix.STA_NANO, Offset: -12}, true, -12},
		{"unsync bit", unix.TIME_OK, unix.Timex{Status: unix.STA_UNSYNC}, false, 0},
		{"clock error", unix.TIME_ERROR, unix.Timex{Status: unix.STA_PLL}, false, 0},
	} {
		ts := fromTimex(c.state, &c.tx, 1, "close")
		if ts.Synchronized != c.synced || ts.OffsetNs != c.off || ts.EstErrorUs != c.tx.Esterror || ts.MaxErrorUs != c.tx.Maxerror || ts.ReadWhen != "close" {
			t.Errorf("%s: %+v", c.name, ts)
		}
	}
	if ts := fromTimex(unix.TIME_ERROR, &unix.Timex{}, 1, ""); ts.State != "TIME_ERROR" {
		t.Errorf("state %q", ts.State)
	}
}

func TestBuildRedactsAndAttributes(t *testing.T) {
	cfg := &config.Config{
		Brokers: []config.Broker{{ID: "plc", URL: "ssl://robot:s3cret@broker:8883", Password: config.NewSecret("brokerpw")}},
		Devices: []config.Device{
			{ID: "cam1", Type: config.DeviceRTSP, URL: "rtsp://admin:hunter2@10.0.0.5/main", Password: config.NewSecret("campw")},
			{ID: "arm", Type: config.DeviceMQTT, Broker: "plc", Topics: []string{"cell1/arm/#"}, Format: "json"},
		},
	}
	s, err := NewStatic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := *cfg
	other.Devices = append([]config.Device(nil), cfg.Devices...)
	other.Devices[0].Password = config.NewSecret("another password")
	s2, _ := NewStatic(&other)
	if s.ConfigSHA256 != s2.ConfigSHA256 {
		t.Error("config hash depends on a secret")
	}
	e := episode.Episode{Quality: []episode.StreamReport{
		{Stream: "cell1/cam1", Kind: "video", Codec: "h265", Clock: episode.ClockReport{Mode: "device", OffsetNs: 5}},
		{Stream: "cell1/arm/joints", Kind: "telemetry", Codec: "json"},
		// Its last samples stamped from arrival: the source, not the mode.
		{Stream: "cell1/cam2", Kind: "video", Codec: "h264", Clock: episode.ClockReport{Mode: "device", ClockSource: "arrival", ClockSourceReason: "held"}},
	}, TimeSync: &episode.TimeSync{Synchronized: true, ReadWhen: "close"}}
	info := map[string]StreamInfo{"cell1/cam1": {Device: "cam1", Source: "rtsp://admin:hunter2@10.0.0.5/main"}, "cell1/arm/joints": {Device: "arm", Source: "cell1/arm/joints"}}
	p := s.Build(e, func(s string) StreamInfo { return info[s] }, func() *episode.TimeSync { t.Error("read at upload although the episode has a reading"); return nil })
	js, _ := json.Marshal(p)
	for _, secret := range []string{"hunter2", "s3cret", "brokerpw", "campw"} {
		if strings.Contains(string(js), secret) {
			t.Errorf("provenance holds %q: %s", secret, js)
		}
	}
	if p.Devices[0].Kinds[0] != "video" || p.Devices[0].Codecs[0] != "h265" || p.Devices[1].Codecs[0] != "json" ||
		p.Streams[0].ClockSource != "device" || p.Streams[0].Clock.OffsetNs != 5 || p.Streams[1].ClockSource != "unknown" || !p.TimeSync.Synchronized ||
		p.Streams[2].ClockSource != "arrival" {
		t.Errorf("provenance %s", js)
	}
}
