package sim

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// The daemon config Config writes: a subset of internal/config's schema
// (docs/CONFIG.md), declared here because components do not import config.
type (
	yamlConfig struct {
		Gateway struct {
			ID   string `yaml:"id"`
			Site string `yaml:"site"`
		} `yaml:"gateway"`
		API struct {
			Listen string `yaml:"listen"`
		} `yaml:"api"`
		Storage struct {
			Dir string `yaml:"dir"`
		} `yaml:"storage"`
		Brokers []yamlBroker `yaml:"brokers"`
		Devices []yamlDevice `yaml:"devices"`
		Cells   []yamlCell   `yaml:"cells"`
		Sync    struct {
			Mode   string `yaml:"mode"`
			Target struct {
				Type string `yaml:"type"`
				Path string `yaml:"path"`
			} `yaml:"target"`
		} `yaml:"sync"`
	}
	yamlBroker struct {
		ID  string `yaml:"id"`
		URL string `yaml:"url"`
	}
	yamlDevice struct {
		ID        string      `yaml:"id"`
		Type      string      `yaml:"type"`
		URL       string      `yaml:"url,omitempty"`
		Transport string      `yaml:"transport,omitempty"`
		Clock     string      `yaml:"clock,omitempty"`
		Broker    string      `yaml:"broker,omitempty"`
		Topics    []string    `yaml:"topics,omitempty,flow"`
		Stream    string      `yaml:"stream,omitempty"`
		Format    string      `yaml:"format,omitempty"`
		TimeField string      `yaml:"time_field,omitempty"`
		TimeUnit  string      `yaml:"time_unit,omitempty"`
		Layout    *yamlLayout `yaml:"layout,omitempty"`
	}
	yamlLayout struct {
		HeaderSize int         `yaml:"header_size"`
		TimeOffset int         `yaml:"time_offset"`
		Stride     int         `yaml:"stride"`
		Fields     []yamlField `yaml:"fields"`
	}
	yamlField struct {
		Name   string `yaml:"name"`
		Offset int    `yaml:"offset"`
		Type   string `yaml:"type"`
	}
	yamlCell struct {
		ID       string   `yaml:"id"`
		Devices  []string `yaml:"devices,flow"`
		Preroll  string   `yaml:"preroll"`
		Postroll string   `yaml:"postroll"`
		Trigger  struct {
			Broker string `yaml:"broker"`
			Topic  string `yaml:"topic"`
		} `yaml:"trigger"`
	}
)

// brokerID is the broker's id in Config.
const brokerID = "sim"

// Config returns a daemon config (YAML, in internal/config's schema) that
// records this simulated cell: gateway "demo" at site "sim", the store in
// dataDir, the HTTP API on listen, one broker (the embedded one), the
// cameras over RTSP/TCP with RTCP time, robot1 (JSON, header.stamp),
// gripper (CBOR, stamp) and lidar (point cloud, time at offset 0) over
// MQTT, all in cell "cell1" with a 2 s preroll, a 1 s postroll and the
// trigger topic, and uploads to a dir target at uploadDir. Call it after
// Ready when the addresses use port 0.
func (s *Sim) Config(dataDir, uploadDir, listen string) string {
	var c yamlConfig
	c.Gateway.ID, c.Gateway.Site = "demo", "sim"
	c.API.Listen = listen
	c.Storage.Dir = dataDir
	c.Brokers = []yamlBroker{{ID: brokerID, URL: "tcp://" + s.MQTTAddr()}}
	cell := yamlCell{ID: Cell, Preroll: "2s", Postroll: "1s"}
	cell.Trigger.Broker, cell.Trigger.Topic = brokerID, TopicTrigger
	for _, cam := range s.cams {
		c.Devices = append(c.Devices, yamlDevice{
			ID: cam.id, Type: "rtsp", URL: "rtsp://" + s.RTSPAddr() + cam.path, Transport: "tcp", Clock: "rtcp",
		})
	}
	c.Devices = append(c.Devices,
		yamlDevice{ID: DeviceRobot, Type: "mqtt", Broker: brokerID, Topics: []string{TopicJointStates},
			Stream: "{topic}", Format: "json", TimeField: "header.stamp", TimeUnit: "ns"},
		yamlDevice{ID: DeviceGripper, Type: "mqtt", Broker: brokerID, Topics: []string{TopicGripper},
			Stream: "{topic}", Format: "cbor", TimeField: "stamp", TimeUnit: "ns"},
		yamlDevice{ID: DeviceLidar, Type: "mqtt", Broker: brokerID, Topics: []string{TopicLidar},
			Stream: StreamLidar, Format: "pointcloud", Layout: &yamlLayout{
				HeaderSize: LidarHeaderSize, TimeOffset: 0, Stride: LidarStride,
				Fields: []yamlField{
					{"x", 0, "float32"}, {"y", 4, "float32"}, {"z", 8, "float32"}, {"intensity", 12, "float32"},
				},
			}},
	)
	for _, d := range c.Devices {
		cell.Devices = append(cell.Devices, d.ID)
	}
	c.Cells = []yamlCell{cell}
	c.Sync.Mode = "daemon"
	c.Sync.Target.Type, c.Sync.Target.Path = "dir", uploadDir
	out, err := yaml.Marshal(&c)
	if err != nil {
		// Plain strings and ints always marshal.
		panic(fmt.Sprintf("sim: marshal config: %v", err))
	}
	return "# episoded config recording the simulated cell (episoded simulate).\n" + string(out)
}
