"""Tests of the spoke-side agent runner (spoke/agent) and the scripted LLM server."""
