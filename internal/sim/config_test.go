package sim

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/config"
)

func TestConfigParses(t *testing.T) {
	s := startSim(t, Options{Cameras: 3, TriggerPeriod: -1})
	dir := t.TempDir()
	data, up := filepath.Join(dir, "data dir"), filepath.Join(dir, `up: "load"`)
	text := s.Config(data, up, "127.0.0.1:7999")
	cfg, err := config.Parse(filepath.Join(dir, "sim.yaml"), []byte(text), os.LookupEnv)
	if err != nil {
		t.Fatalf("config.Parse: %v\n%s", err, text)
	}
	if cfg.Gateway.ID != "demo" || cfg.Gateway.Site != "sim" || cfg.Storage.Dir != data || cfg.API.Listen != "127.0.0.1:7999" {
		t.Errorf("gateway/storage/api: %+v %+v %+v", cfg.Gateway, cfg.Storage, cfg.API)
	}
	if len(cfg.Brokers) != 1 || cfg.Brokers[0].URL != "tcp://"+s.MQTTAddr() {
		t.Errorf("brokers: %+v", cfg.Brokers)
	}
	if cfg.Sync.Target.Type != "dir" || cfg.Sync.Target.Path != up {
		t.Errorf("sync target: %+v", cfg.Sync.Target)
	}
	devices := map[string]config.Device{}
	for _, d := range cfg.Devices {
		devices[d.ID] = d
	}
	for i, url := range s.CameraURLs() {
		d := devices[s.Devices()[i]]
		if d.Type != "rtsp" || d.URL != url || d.Clock != "rtcp" || d.Transport != "tcp" || d.Stream != s.Streams()[i] {
			t.Errorf("camera %d: %+v", i, d)
		}
	}
	robot, grip, lidar := devices[DeviceRobot], devices[DeviceGripper], devices[DeviceLidar]
	if robot.Format != "json" || robot.TimeField != "header.stamp" || robot.TimeUnit != "ns" || robot.Clock != "payload" ||
		!slices.Equal(robot.Topics, []string{TopicJointStates}) {
		t.Errorf("robot1: %+v", robot)
	}
	if grip.Format != "cbor" || grip.TimeField != "stamp" || grip.TimeUnit != "ns" || !slices.Equal(grip.Topics, []string{TopicGripper}) {
		t.Errorf("gripper: %+v", grip)
	}
	l := lidar.Layout
	if lidar.Format != "pointcloud" || lidar.Stream != StreamLidar || lidar.Clock != "payload" || l == nil ||
		l.HeaderSize != 16 || l.TimeOffset != 0 || l.Stride != 16 || len(l.Fields) != 4 || l.Fields[3].Name != "intensity" {
		t.Errorf("lidar: %+v layout %+v", lidar, l)
	}
	if len(cfg.Cells) != 1 {
		t.Fatalf("cells: %+v", cfg.Cells)
	}
	c := cfg.Cells[0]
	if c.ID != Cell || len(c.Devices) != 3+3 || c.Preroll != 2*time.Second || c.Postroll != time.Second ||
		c.Trigger == nil || c.Trigger.Topic != TopicTrigger || c.Trigger.Broker != cfg.Brokers[0].ID {
		t.Errorf("cell: %+v", c)
	}
	// Truth knows every stream the config names.
	for _, d := range cfg.Devices {
		if _, ok := s.Stats(d.Stream); !ok && d.Stream != "{topic}" {
			t.Errorf("stream %q of %s unknown to the sim", d.Stream, d.ID)
		}
		for _, topic := range d.Topics {
			if _, ok := s.Stats(topic); !ok {
				t.Errorf("topic %q unknown to the sim", topic)
			}
		}
	}
}
