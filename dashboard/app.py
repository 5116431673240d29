"""The Streamlit script: page config, session state, sidebar, page. `streamlit run app.py` (the checkout) and
`moe-scope` (an installed copy) both run this file."""
import streamlit as st


def main() -> None:
    st.set_page_config(page_title="moe-scope", page_icon="🔀", layout="wide")
    from dashboard import page, sidebar  # after set_page_config

    sidebar.init_session()
    sidebar.render_sidebar()
    page.render()


if __name__ == "__main__":  # streamlit runs this file as __main__
    main()
