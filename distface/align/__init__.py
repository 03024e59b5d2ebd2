"""Face alignment: detect 5 landmarks (detector.py), fit the similarity onto the ArcFace template and warp
(similarity.py), over a whole identity-folder tree in parallel (folder.py). Needs the align extra (MTCNN)."""
