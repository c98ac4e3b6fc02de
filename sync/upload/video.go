package upload

import (
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/export"
)

// VideoStart says where one camera's video in the uploaded MCAP really
// starts (see sync/export and docs/VIDEO.md).
type VideoStart struct {
	Stream string `json:"stream"`
	// StartNs is the aligned decode time of the first frame, a keyframe:
	// before the window start with pre-roll. Absent if the window holds no
	// keyframe of the stream.
	StartNs *int64 `json:"start_ns,omitempty"`
	// LeftOut counts frames inside the window left out because the
	// keyframe they depend on was no longer stored.
	LeftOut uint64 `json:"left_out,omitempty"`
}

// videoManifest fills the manifest's video starts from the export plan
// (the same computation the MCAP's own manifest carries) and the frames
// left out into its quality report.
func videoManifest(src export.Source, e episode.Episode, man *Manifest) error {
	plan, err := export.Plan(src, e)
	if err != nil {
		return err
	}
	left := map[string]uint64{}
	for _, si := range plan.Streams {
		if si.Kind != "video" {
			continue
		}
		man.Video = append(man.Video, VideoStart{Stream: si.Stream, StartNs: si.VideoStart, LeftOut: si.VideoLeftOut})
		left[si.Stream] = si.VideoLeftOut
	}
	man.Quality = append([]episode.StreamReport(nil), man.Quality...)
	for i := range man.Quality {
		if n, ok := left[man.Quality[i].Stream]; ok {
			man.Quality[i].VideoLeftOut = n
		}
	}
	return nil
}
