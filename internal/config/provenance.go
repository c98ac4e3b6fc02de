package config

import (
	"slices"

	"github.com/episoded/episoded/internal/provenance"
	"github.com/episoded/episoded/internal/redact"
)

// ProvenanceDevices lists the configured devices for the upload manifest's
// provenance block (provenance.NewStatic), their URLs redacted: a camera's
// own URL, an MQTT device's broker URL.
func (c *Config) ProvenanceDevices() []provenance.Device {
	brokers := map[string]string{}
	for _, b := range c.Brokers {
		brokers[b.ID] = redact.URL(b.URL)
	}
	var out []provenance.Device
	for _, d := range c.Devices {
		dev := provenance.Device{ID: d.ID, Type: d.Type, Clock: d.Clock, Format: d.Format}
		switch d.Type {
		case DeviceRTSP:
			dev.URL = redact.URL(d.URL)
		case DeviceMQTT:
			dev.URL = brokers[d.Broker]
			dev.Topics = slices.Clone(d.Topics)
		}
		out = append(out, dev)
	}
	return out
}
