"""IBISAgent backend server: IBISAgentLib sessions over HTTP (FastAPI + uvicorn)."""
