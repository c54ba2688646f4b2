"""The reporting layer: reads result files and the grid's sheet and layout, never a job module;
editing it leaves trained models and their scores valid."""
