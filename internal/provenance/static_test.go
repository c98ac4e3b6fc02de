package provenance_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/provenance"
)

func TestBuildRedactsAndAttributes(t *testing.T) {
	cfg := &config.Config{
		Brokers: []config.Broker{{ID: "plc", URL: "ssl://robot:s3cret@broker:8883", Password: config.NewSecret("brokerpw")}},
		Devices: []config.Device{
			{ID: "cam1", Type: config.DeviceRTSP, URL: "rtsp://admin:hunter2@10.0.0.5/main", Password: config.NewSecret("campw")},
			{ID: "arm", Type: config.DeviceMQTT, Broker: "plc", Topics: []string{"cell1/arm/#"}, Format: "json"},
		},
	}
	s, err := provenance.NewStatic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := *cfg
	other.Devices = append([]config.Device(nil), cfg.Devices...)
	other.Devices[0].Password = config.NewSecret("another password")
	s2, _ := provenance.NewStatic(&other)
	if s.ConfigSHA256 != s2.ConfigSHA256 {
		t.Error("config hash depends on a secret")
	}
	e := episode.Episode{Quality: []episode.StreamReport{
		{Stream: "cell1/cam1", Kind: "video", Codec: "h265", Clock: episode.ClockReport{Mode: "device", OffsetNs: 5}},
		{Stream: "cell1/arm/joints", Kind: "telemetry", Codec: "json"},
		// Its last samples stamped from arrival: the source, not the mode.
		{Stream: "cell1/cam2", Kind: "video", Codec: "h264", Clock: episode.ClockReport{Mode: "device", ClockSource: "arrival", ClockSourceReason: "held"}},
	}, TimeSync: &episode.TimeSync{Synchronized: true, ReadWhen: "close"}}
	info := map[string]provenance.StreamInfo{"cell1/cam1": {Device: "cam1", Source: "rtsp://admin:hunter2@10.0.0.5/main"}, "cell1/arm/joints": {Device: "arm", Source: "cell1/arm/joints"}}
	p := s.Build(e, func(s string) provenance.StreamInfo { return info[s] }, func() *episode.TimeSync { t.Error("read at upload although the episode has a reading"); return nil })
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
