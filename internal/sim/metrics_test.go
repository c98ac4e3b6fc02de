package sim

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := startSim(t, Options{Cameras: 1, Loss: 0.5, Seed: 5, TriggerPeriod: -1, Registerer: reg})
	// Wait for a few frames and messages.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, _ := s.Stats("cell1/cam1")
		js, _ := s.Stats(TopicJointStates)
		if st.PacketsDropped > 0 && js.Sent > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no frames or messages: %+v %+v", st, js)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stream" {
					if got[mf.GetName()] == nil {
						got[mf.GetName()] = map[string]float64{}
					}
					got[mf.GetName()][l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	if got["episoded_sim_sent_total"][TopicJointStates] == 0 || got["episoded_sim_sent_total"]["cell1/cam1"] == 0 {
		t.Errorf("sent_total: %v", got["episoded_sim_sent_total"])
	}
	if got["episoded_sim_rtp_packets_dropped_total"]["cell1/cam1"] == 0 {
		t.Errorf("rtp_packets_dropped_total: %v", got["episoded_sim_rtp_packets_dropped_total"])
	}
	if _, ok := got["episoded_sim_outage_frames_total"]["cell1/cam1"]; !ok {
		t.Errorf("no outage_frames_total: %v", got)
	}
	// A second Sim on the same registry is refused, not silently merged.
	if _, err := New(Options{Registerer: reg}); err == nil {
		t.Error("duplicate registration accepted")
	}
}
